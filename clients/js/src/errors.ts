/**
 * The SDK's errors: one class per thing that can go wrong, each with a stable `name`, so
 * callers branch with `instanceof` or on `error.name`.
 */

/** Every error this SDK throws. */
export class KeyhavenError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** IndexedDB cannot be used (a private window, storage disabled, an old browser). */
export class KeyStoreUnavailableError extends KeyhavenError {}

/** No key with that label in the store. */
export class KeyNotFoundError extends KeyhavenError {}

/** A key with that label exists already (nothing was overwritten). */
export class KeyExistsError extends KeyhavenError {}

/** The backup's password is wrong, or the backup was changed (PKCS#8 cannot tell which). */
export class BadPasswordError extends KeyhavenError {}

/** Malformed input: a PEM that is not an encrypted PKCS#8 key, an unsupported algorithm. */
export class InvalidInputError extends KeyhavenError {}

/** This key was made never-extractable: there is no backup of it, by design. */
export class NotBackupableError extends KeyhavenError {}

/** The server's answer is not signed by the pinned server key for this request. */
export class UnauthenticResponseError extends KeyhavenError {}

/** The RFC 9457 problem document of a refusal. */
export interface Problem {
  type: string;
  title: string;
  status: number;
  detail: string;
  [extension: string]: unknown;
}

/** keyhaven-server refused the request: its problem's `status`, `type`, `title`, `detail`. */
export class ProblemError extends KeyhavenError {
  readonly status: number;
  readonly type: string;
  readonly title: string;
  readonly detail: string;
  readonly problem: Problem;

  constructor(problem: Problem) {
    super(`${problem.status} ${problem.title}: ${problem.detail}`);
    this.problem = problem;
    this.status = problem.status;
    this.type = problem.type;
    this.title = problem.title;
    this.detail = problem.detail;
  }
}
