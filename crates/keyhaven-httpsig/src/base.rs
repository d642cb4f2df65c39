//! Component identifiers and the signature base (RFC 9421 sections 2 and 2.5).

use crate::error::{HttpSigError, Result};
use crate::message::{Message, Request};
use crate::sfv::{self, BareItem, InnerList, Item, Params};

/// A covered component: a field name (lowercase) or a derived component (`@method`, ...), with
/// its parameters (`req` to cover the request a response answers, `bs` for byte sequences).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    name: String,
    params: Params,
}

impl Component {
    /// The component named `name` (`@method`, `content-digest`, ...; field names are
    /// lowercased).
    ///
    /// # Errors
    /// [`HttpSigError::Malformed`] for an empty name or one with characters a field name never
    /// has.
    pub fn new(name: &str) -> Result<Self> {
        let name = name.to_ascii_lowercase();
        let body = name.strip_prefix('@').unwrap_or(&name);
        if body.is_empty() || !body.bytes().all(crate::message::is_tchar) {
            return Err(HttpSigError::Malformed {
                what: "component identifier",
                reason: format!("{name:?} is not a field name or derived component"),
            });
        }
        Ok(Component {
            name,
            params: Vec::new(),
        })
    }

    /// The same component of the request a response answers (`;req`).
    #[must_use]
    pub fn of_request(mut self) -> Self {
        self.params.push(("req".into(), BareItem::Boolean(true)));
        self
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn flag(&self, key: &str) -> bool {
        self.params
            .iter()
            .any(|(k, v)| k == key && *v == BareItem::Boolean(true))
    }

    /// The component as an item of `Signature-Input`'s inner list.
    pub(crate) fn to_item(&self) -> Item {
        Item {
            bare: BareItem::String(self.name.clone()),
            params: self.params.clone(),
        }
    }

    /// The component an item of a received `Signature-Input` names.
    pub(crate) fn from_item(item: &Item) -> Result<Self> {
        let BareItem::String(name) = &item.bare else {
            return Err(HttpSigError::Malformed {
                what: "Signature-Input",
                reason: "a covered component is not a string".into(),
            });
        };
        if *name != name.to_ascii_lowercase() {
            return Err(HttpSigError::Malformed {
                what: "Signature-Input",
                reason: format!("component {name:?} is not lowercase"),
            });
        }
        let mut c = Component::new(name)?;
        for (k, v) in &item.params {
            match (k.as_str(), v) {
                ("req" | "bs", BareItem::Boolean(true)) => {}
                _ => return Err(HttpSigError::UnsupportedComponent(format!("{name};{k}"))),
            }
        }
        c.params.clone_from(&item.params);
        Ok(c)
    }

    /// Its serialized identifier, as in the signature base (`"content-digest";req`).
    pub(crate) fn identifier(&self) -> String {
        let mut out = String::new();
        sfv::write_item(&mut out, &self.to_item());
        out
    }

    /// Its value in `message` (a response's `;req` components come from its request).
    fn value(&self, message: Message<'_>) -> Result<String> {
        let message = if self.flag("req") {
            match message {
                Message::Response(r) => Message::Request(
                    r.request()
                        .ok_or_else(|| HttpSigError::MissingComponent(self.identifier()))?,
                ),
                Message::Request(_) => {
                    return Err(HttpSigError::Malformed {
                        what: "component identifier",
                        reason: format!("{} names a request from a request", self.identifier()),
                    });
                }
            }
        } else {
            message
        };
        let missing = || HttpSigError::MissingComponent(self.identifier());
        if let Some(derived) = self.name.strip_prefix('@') {
            if self.flag("bs") {
                return Err(HttpSigError::UnsupportedComponent(self.identifier()));
            }
            fn request<'m>(c: &Component, m: Message<'m>) -> Result<&'m Request> {
                match m {
                    Message::Request(r) => Ok(r),
                    Message::Response(_) => Err(HttpSigError::Malformed {
                        what: "component identifier",
                        reason: format!(
                            "{} is a request component; a response covers it with ;req",
                            c.identifier()
                        ),
                    }),
                }
            }
            return match derived {
                "method" => Ok(request(self, message)?.method().to_owned()),
                "target-uri" => Ok(request(self, message)?.target_uri().to_owned()),
                "authority" => Ok(request(self, message)?.uri().authority.clone()),
                "scheme" => Ok(request(self, message)?.uri().scheme.clone()),
                "path" => Ok(request(self, message)?.uri().path.clone()),
                "query" => {
                    let q = request(self, message)?.uri().query.as_deref().unwrap_or("");
                    Ok(format!("?{q}"))
                }
                "request-target" => {
                    let u = request(self, message)?.uri();
                    Ok(match &u.query {
                        Some(q) => format!("{}?{q}", u.path),
                        None => u.path.clone(),
                    })
                }
                "status" => match message {
                    Message::Response(r) => Ok(r.status().to_string()),
                    Message::Request(_) => Err(missing()),
                },
                _ => Err(HttpSigError::UnsupportedComponent(self.identifier())),
            };
        }
        if self.flag("bs") {
            let lines = message.field_lines(&self.name);
            if lines.is_empty() {
                return Err(missing());
            }
            let wrapped: Vec<String> = lines
                .iter()
                .map(|l| {
                    let mut out = String::new();
                    sfv::write_bare(&mut out, &BareItem::ByteSeq(l.as_bytes().to_vec()));
                    out
                })
                .collect();
            return Ok(wrapped.join(", "));
        }
        message.field(&self.name).ok_or_else(missing)
    }
}

/// The signature base of `message` for `covered` components and the serialized signature
/// parameters `params` (the value of `@signature-params`). Refuses a component value with a
/// line break (it could forge a line of the base).
///
/// # Errors
/// [`HttpSigError::MissingComponent`] for a component the message lacks,
/// [`HttpSigError::UnsupportedComponent`], [`HttpSigError::Malformed`] for a component listed
/// twice or a value that would break the base's lines.
pub fn signature_base(message: Message<'_>, covered: &[Component], params: &str) -> Result<String> {
    let mut base = String::new();
    for (n, c) in covered.iter().enumerate() {
        if covered[..n].contains(c) {
            return Err(HttpSigError::Malformed {
                what: "Signature-Input",
                reason: format!("component {} is listed twice", c.identifier()),
            });
        }
        let value = c.value(message)?;
        if value.contains(['\n', '\r', '\0']) {
            return Err(HttpSigError::Malformed {
                what: "component value",
                reason: format!("{} holds a line break", c.identifier()),
            });
        }
        base.push_str(&c.identifier());
        base.push_str(": ");
        base.push_str(&value);
        base.push('\n');
    }
    base.push_str("\"@signature-params\": ");
    base.push_str(params);
    Ok(base)
}

/// The inner list of `Signature-Input` for `covered` and `params`, serialized.
pub(crate) fn serialize_params(covered: &[Component], params: &Params) -> String {
    let mut out = String::new();
    sfv::write_inner_list(
        &mut out,
        &InnerList {
            items: covered.iter().map(Component::to_item).collect(),
            params: params.clone(),
        },
    );
    out
}
