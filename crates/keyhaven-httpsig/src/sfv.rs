//! The part of RFC 8941 (Structured Field Values) that HTTP message signatures use: dictionaries
//! whose members are items or inner lists, with parameters; bare items of every type. Parsing is
//! strict (anything the RFC's algorithm refuses is an error naming the offset), and serializing
//! is canonical, so `serialize(parse(x))` is what a conforming sender wrote.

use std::fmt::Write as _;

use base64ct::{Base64, Encoding};

/// A bare item (RFC 8941 section 3.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BareItem {
    /// An integer (at most 15 digits).
    Integer(i64),
    /// A decimal, kept as its canonical text (`1.5`): signatures never compute with one.
    Decimal(String),
    /// A string of printable ASCII.
    String(String),
    /// A token.
    Token(String),
    /// A byte sequence.
    ByteSeq(Vec<u8>),
    /// A boolean.
    Boolean(bool),
}

/// Parameters: keys with bare-item values, in order, keys unique (a repeated key keeps its
/// first position and the last value, as RFC 8941 section 4.2.3.2 says).
pub type Params = Vec<(String, BareItem)>;

/// An item with its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The value.
    pub bare: BareItem,
    /// Its parameters.
    pub params: Params,
}

/// An inner list with its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InnerList {
    /// The items.
    pub items: Vec<Item>,
    /// The list's parameters.
    pub params: Params,
}

/// A dictionary member's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Member {
    /// An item.
    Item(Item),
    /// An inner list.
    InnerList(InnerList),
}

/// A dictionary: keys in order, unique.
pub type Dictionary = Vec<(String, Member)>;

/// Why a field value is not a structured field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at byte {at}: {reason}")]
pub struct ParseError {
    /// Where.
    pub at: usize,
    /// What is wrong.
    pub reason: &'static str,
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

type Parsed<T> = Result<T, ParseError>;

impl Parser<'_> {
    fn err<T>(&self, reason: &'static str) -> Parsed<T> {
        Err(ParseError { at: self.i, reason })
    }
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn skip_sp(&mut self) {
        while self.peek() == Some(b' ') {
            self.i += 1;
        }
    }
    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }

    fn key(&mut self) -> Parsed<String> {
        match self.peek() {
            Some(c) if c.is_ascii_lowercase() || c == b'*' => {}
            _ => return self.err("a key must start with a lowercase letter or '*'"),
        }
        let start = self.i;
        while let Some(c) = self.peek() {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || b"_-.*".contains(&c) {
                self.i += 1;
            } else {
                break;
            }
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    fn params(&mut self) -> Parsed<Params> {
        let mut params: Params = Vec::new();
        while self.peek() == Some(b';') {
            self.i += 1;
            self.skip_sp();
            let key = self.key()?;
            let value = if self.peek() == Some(b'=') {
                self.i += 1;
                self.bare_item()?
            } else {
                BareItem::Boolean(true)
            };
            match params.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => slot.1 = value,
                None => params.push((key, value)),
            }
        }
        Ok(params)
    }

    fn bare_item(&mut self) -> Parsed<BareItem> {
        match self.peek() {
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b'"') => self.string(),
            Some(b':') => self.byte_seq(),
            Some(b'?') => self.boolean(),
            Some(c) if c.is_ascii_alphabetic() || c == b'*' => self.token(),
            _ => self.err("not the start of an item"),
        }
    }

    fn number(&mut self) -> Parsed<BareItem> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        let digits_start = self.i;
        if !matches!(self.peek(), Some(b'0'..=b'9')) {
            return self.err("a number needs a digit");
        }
        let mut decimal = false;
        while let Some(c) = self.peek() {
            if c.is_ascii_digit() {
                self.i += 1;
            } else if c == b'.' && !decimal {
                if self.i - digits_start > 12 {
                    return self.err("a decimal has at most 12 integer digits");
                }
                decimal = true;
                self.i += 1;
            } else {
                break;
            }
            let len = self.i - digits_start;
            if (!decimal && len > 15) || (decimal && len > 16) {
                return self.err("a number is too long");
            }
        }
        let text = std::str::from_utf8(&self.s[start..self.i]).unwrap_or_default();
        if decimal {
            let fraction = text.rsplit_once('.').map_or(0, |(_, f)| f.len());
            if fraction == 0 || fraction > 3 {
                return self.err("a decimal has 1 to 3 fractional digits");
            }
            return Ok(BareItem::Decimal(text.to_owned()));
        }
        text.parse::<i64>()
            .map(BareItem::Integer)
            .or_else(|_| self.err("an integer out of range"))
    }

    fn string(&mut self) -> Parsed<BareItem> {
        self.i += 1;
        let mut out = String::new();
        loop {
            match self.peek() {
                None => return self.err("a string is not closed"),
                Some(b'"') => {
                    self.i += 1;
                    return Ok(BareItem::String(out));
                }
                Some(b'\\') => {
                    self.i += 1;
                    match self.peek() {
                        Some(c @ (b'"' | b'\\')) => {
                            out.push(char::from(c));
                            self.i += 1;
                        }
                        _ => return self.err("only \\\" and \\\\ are escapes in a string"),
                    }
                }
                Some(c @ 0x20..=0x7e) => {
                    out.push(char::from(c));
                    self.i += 1;
                }
                Some(_) => return self.err("a string holds printable ASCII only"),
            }
        }
    }

    fn token(&mut self) -> Parsed<BareItem> {
        let start = self.i;
        self.i += 1;
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&c) {
                self.i += 1;
            } else {
                break;
            }
        }
        Ok(BareItem::Token(
            String::from_utf8_lossy(&self.s[start..self.i]).into_owned(),
        ))
    }

    fn byte_seq(&mut self) -> Parsed<BareItem> {
        self.i += 1;
        let start = self.i;
        while let Some(c) = self.peek() {
            if c == b':' {
                break;
            }
            if !(c.is_ascii_alphanumeric() || b"+/=".contains(&c)) {
                return self.err("a byte sequence holds base64 only");
            }
            self.i += 1;
        }
        if self.peek() != Some(b':') {
            return self.err("a byte sequence is not closed");
        }
        let text = std::str::from_utf8(&self.s[start..self.i]).unwrap_or_default();
        let bytes = Base64::decode_vec(text).or_else(|_| self.err("invalid base64"))?;
        self.i += 1;
        Ok(BareItem::ByteSeq(bytes))
    }

    fn boolean(&mut self) -> Parsed<BareItem> {
        self.i += 1;
        let b = match self.peek() {
            Some(b'1') => true,
            Some(b'0') => false,
            _ => return self.err("a boolean is ?0 or ?1"),
        };
        self.i += 1;
        Ok(BareItem::Boolean(b))
    }

    fn item(&mut self) -> Parsed<Item> {
        let bare = self.bare_item()?;
        let params = self.params()?;
        Ok(Item { bare, params })
    }

    fn inner_list(&mut self) -> Parsed<InnerList> {
        self.i += 1;
        let mut items = Vec::new();
        loop {
            self.skip_sp();
            match self.peek() {
                Some(b')') => {
                    self.i += 1;
                    let params = self.params()?;
                    return Ok(InnerList { items, params });
                }
                None => return self.err("an inner list is not closed"),
                _ => {}
            }
            items.push(self.item()?);
            match self.peek() {
                Some(b' ' | b')') => {}
                _ => return self.err("items of an inner list are separated by spaces"),
            }
        }
    }

    fn dictionary(&mut self) -> Parsed<Dictionary> {
        let mut dict: Dictionary = Vec::new();
        self.skip_sp();
        while self.peek().is_some() {
            let key = self.key()?;
            let member = if self.peek() == Some(b'=') {
                self.i += 1;
                if self.peek() == Some(b'(') {
                    Member::InnerList(self.inner_list()?)
                } else {
                    Member::Item(self.item()?)
                }
            } else {
                Member::Item(Item {
                    bare: BareItem::Boolean(true),
                    params: self.params()?,
                })
            };
            match dict.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => slot.1 = member,
                None => dict.push((key, member)),
            }
            self.skip_ows();
            match self.peek() {
                None => break,
                Some(b',') => {
                    self.i += 1;
                    self.skip_ows();
                    if self.peek().is_none() {
                        return self.err("a dictionary ends with a comma");
                    }
                }
                Some(_) => return self.err("dictionary members are separated by commas"),
            }
        }
        Ok(dict)
    }
}

/// Whether `s` is a structured-field key (a dictionary member's or a parameter's name): a
/// lowercase letter or `*`, then lowercase letters, digits, `_`, `-`, `.`, `*`.
pub fn is_key(s: &str) -> bool {
    let mut p = Parser {
        s: s.as_bytes(),
        i: 0,
    };
    p.key().is_ok() && p.i == s.len()
}

/// Parses a dictionary field value (the combined value of every field line).
///
/// # Errors
/// A [`ParseError`] naming the offset and the rule broken.
pub fn parse_dictionary(value: &str) -> Result<Dictionary, ParseError> {
    let mut p = Parser {
        s: value.as_bytes(),
        i: 0,
    };
    let dict = p.dictionary()?;
    p.skip_sp();
    if p.peek().is_some() {
        return p.err("trailing characters after the dictionary");
    }
    Ok(dict)
}

/// Parses one item (with parameters) standing alone, e.g. a serialized component identifier.
///
/// # Errors
/// A [`ParseError`].
pub fn parse_item(value: &str) -> Result<Item, ParseError> {
    let mut p = Parser {
        s: value.as_bytes(),
        i: 0,
    };
    p.skip_sp();
    let item = p.item()?;
    p.skip_sp();
    if p.peek().is_some() {
        return p.err("trailing characters after the item");
    }
    Ok(item)
}

/// Serializes a bare item canonically.
pub fn write_bare(out: &mut String, b: &BareItem) {
    match b {
        BareItem::Integer(n) => {
            let _ = write!(out, "{n}");
        }
        BareItem::Decimal(d) => out.push_str(d),
        BareItem::String(s) => {
            out.push('"');
            for c in s.chars() {
                if c == '"' || c == '\\' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
        }
        BareItem::Token(t) => out.push_str(t),
        BareItem::ByteSeq(bytes) => {
            out.push(':');
            out.push_str(&Base64::encode_string(bytes));
            out.push(':');
        }
        BareItem::Boolean(b) => out.push_str(if *b { "?1" } else { "?0" }),
    }
}

/// Serializes parameters canonically (`;key` for a true boolean).
pub fn write_params(out: &mut String, params: &Params) {
    for (k, v) in params {
        out.push(';');
        out.push_str(k);
        if *v != BareItem::Boolean(true) {
            out.push('=');
            write_bare(out, v);
        }
    }
}

/// Serializes an item with its parameters.
pub fn write_item(out: &mut String, item: &Item) {
    write_bare(out, &item.bare);
    write_params(out, &item.params);
}

/// Serializes an inner list with its parameters.
pub fn write_inner_list(out: &mut String, list: &InnerList) {
    out.push('(');
    for (n, item) in list.items.iter().enumerate() {
        if n > 0 {
            out.push(' ');
        }
        write_item(out, item);
    }
    out.push(')');
    write_params(out, &list.params);
}

/// Serializes a dictionary canonically.
pub fn write_dictionary(dict: &Dictionary) -> String {
    let mut out = String::new();
    for (n, (key, member)) in dict.iter().enumerate() {
        if n > 0 {
            out.push_str(", ");
        }
        out.push_str(key);
        match member {
            Member::Item(item) if item.bare == BareItem::Boolean(true) => {
                write_params(&mut out, &item.params);
            }
            Member::Item(item) => {
                out.push('=');
                write_item(&mut out, item);
            }
            Member::InnerList(list) => {
                out.push('=');
                write_inner_list(&mut out, list);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn signature_input_round_trips() {
        let text = r#"sig1=("@method" "@authority" "content-digest";req);created=1618884473;keyid="k", sig2=:AAEC:"#;
        let dict = parse_dictionary(text).unwrap();
        assert_eq!(dict.len(), 2);
        assert_eq!(write_dictionary(&dict), text);
    }

    #[test]
    fn malformed_values_are_errors_with_an_offset() {
        for bad in [
            "sig1=(\"@method\"",
            "sig1=(\"a\"\"b\")",
            "Sig1=:AA==:",
            "sig1=:not base64!:",
            "sig1=\"unterminated",
            "sig1=?2",
            "sig1=1234567890123456",
            "sig1=1.2345",
            "sig1=(\"a\"),",
            "sig1=\"\u{7f}\"",
            "sig1=a sig2=b",
        ] {
            assert!(parse_dictionary(bad).is_err(), "{bad:?} accepted");
        }
    }

    fn bare() -> impl Strategy<Value = BareItem> {
        prop_oneof![
            (-999_999_999_999_999i64..=999_999_999_999_999).prop_map(BareItem::Integer),
            "[ -~]{0,20}".prop_map(BareItem::String),
            "[a-zA-Z*][a-zA-Z0-9:/!#$%&'*+.^_`|~-]{0,10}".prop_map(BareItem::Token),
            proptest::collection::vec(any::<u8>(), 0..20).prop_map(BareItem::ByteSeq),
            any::<bool>().prop_map(BareItem::Boolean),
        ]
    }

    fn params() -> impl Strategy<Value = Params> {
        proptest::collection::btree_map("[a-z][a-z0-9_.*-]{0,6}", bare(), 0..3)
            .prop_map(|m| m.into_iter().collect())
    }

    proptest! {
        #[test]
        fn serialize_then_parse_is_the_identity(
            members in proptest::collection::btree_map(
                "[a-z][a-z0-9_.*-]{0,6}",
                prop_oneof![
                    (bare(), params()).prop_map(|(bare, params)| Member::Item(Item { bare, params })),
                    (proptest::collection::vec((bare(), params()), 0..4), params()).prop_map(
                        |(items, params)| Member::InnerList(InnerList {
                            items: items.into_iter().map(|(bare, params)| Item { bare, params }).collect(),
                            params,
                        })
                    ),
                ],
                0..4,
            )
        ) {
            let dict: Dictionary = members.into_iter().collect();
            let text = write_dictionary(&dict);
            let parsed = parse_dictionary(&text).unwrap();
            prop_assert_eq!(parsed, dict);
        }

        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,60}") {
            let _ = parse_dictionary(&s);
        }
    }
}
