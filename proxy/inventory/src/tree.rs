//! One document tree for both input formats, with the byte offset of every key and
//! value, so that the walk in `load` reports positions the same way for TOML and JSON.
//!
//! TOML comes from toml's spanned `DeTable`. JSON is first checked by serde_json (whose
//! syntax errors carry line and column), then read again by a small scanner that records
//! offsets, which serde_json does not expose, and reports duplicate keys, which
//! serde_json silently merges.

use toml::de::{DeTable, DeValue};

#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub(crate) val: Val,
    /// Byte offset of the value's first character.
    pub(crate) at: usize,
}

#[derive(Debug, Clone)]
pub(crate) enum Val {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// TOML only.
    Datetime,
    /// JSON only.
    Null,
    Array(Vec<Node>),
    /// Entries in document order.
    Table(Vec<(Key, Node)>),
}

#[derive(Debug, Clone)]
pub(crate) struct Key {
    pub(crate) name: String,
    pub(crate) at: usize,
}

impl Val {
    /// "a string", "an integer", ...: for messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Val::Str(_) => "a string",
            Val::Int(_) => "an integer",
            Val::Float(_) => "a float",
            Val::Bool(_) => "a boolean",
            Val::Datetime => "a datetime",
            Val::Null => "null",
            Val::Array(_) => "an array",
            Val::Table(_) => "a table",
        }
    }
}

impl Node {
    pub(crate) fn get(&self, key: &str) -> Option<&Node> {
        match &self.val {
            Val::Table(entries) => entries.iter().find(|(k, _)| k.name == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match &self.val {
            Val::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// A syntax error: byte offset and message.
pub(crate) type SyntaxError = (usize, String);

// -- TOML ------------------------------------------------------------------------------

pub(crate) fn from_toml(text: &str) -> Result<Node, SyntaxError> {
    let root = DeTable::parse(text).map_err(|e| {
        let at = e.span().map_or(0, |s| s.start);
        (at, format!("invalid TOML: {}", e.message()))
    })?;
    Ok(Node {
        at: 0,
        val: toml_table(root.get_ref()),
    })
}

fn toml_table(t: &DeTable) -> Val {
    let mut entries: Vec<_> = t.iter().collect();
    // toml's map may be sorted by key: put entries back in file order.
    entries.sort_by_key(|(k, _)| k.span().start);
    Val::Table(
        entries
            .into_iter()
            .map(|(k, v)| {
                let key = Key {
                    name: k.get_ref().to_string(),
                    at: k.span().start,
                };
                let node = Node {
                    at: v.span().start,
                    val: toml_value(v.get_ref()),
                };
                (key, node)
            })
            .collect(),
    )
}

fn toml_value(v: &DeValue) -> Val {
    match v {
        DeValue::String(s) => Val::Str(s.to_string()),
        DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) => Val::Int(n),
            // Out of i64 range: keep it visible as what it is for the messages.
            Err(_) => Val::Float(f64::INFINITY),
        },
        DeValue::Float(f) => Val::Float(f.as_str().replace('_', "").parse().unwrap_or(f64::NAN)),
        DeValue::Boolean(b) => Val::Bool(*b),
        DeValue::Datetime(_) => Val::Datetime,
        DeValue::Array(items) => Val::Array(
            items
                .iter()
                .map(|item| Node {
                    at: item.span().start,
                    val: toml_value(item.get_ref()),
                })
                .collect(),
        ),
        DeValue::Table(t) => toml_table(t),
    }
}

// -- JSON ------------------------------------------------------------------------------

/// A key given twice in one JSON object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Duplicate {
    pub(crate) name: String,
    pub(crate) at: usize,
    pub(crate) first: usize,
}

/// The document, and the duplicate keys found in it (each an error).
pub(crate) fn from_json(text: &str) -> Result<(Node, Vec<Duplicate>), SyntaxError> {
    if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(text) {
        let at = offset_of(text, e.line(), e.column());
        let msg = e.to_string();
        // serde_json appends " at line L column C": the position is ours to print.
        let msg = match msg.rfind(" at line ") {
            Some(i) => &msg[..i],
            None => &msg,
        };
        return Err((at, format!("invalid JSON: {msg}")));
    }
    let mut scanner = Scanner {
        text,
        bytes: text.as_bytes(),
        i: 0,
        duplicates: Vec::new(),
    };
    let node = scanner.value(0)?;
    Ok((node, scanner.duplicates))
}

/// Byte offset of serde_json's 1-based line and column (0 = before the first char).
fn offset_of(text: &str, line: usize, column: usize) -> usize {
    let line_start = if line <= 1 {
        0
    } else {
        text.match_indices('\n')
            .nth(line - 2)
            .map_or(text.len(), |(i, _)| i + 1)
    };
    (line_start + column.saturating_sub(1)).min(text.len())
}

/// Reads JSON that serde_json has already accepted; still returns an error rather than
/// panic on anything unexpected.
struct Scanner<'a> {
    text: &'a str,
    bytes: &'a [u8],
    i: usize,
    duplicates: Vec<Duplicate>,
}

const MAX_DEPTH: usize = 128;

impl Scanner<'_> {
    fn ws(&mut self) {
        while matches!(self.bytes.get(self.i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn fail<T>(&self, what: &str) -> Result<T, SyntaxError> {
        Err((self.i.min(self.text.len()), format!("invalid JSON: {what}")))
    }

    fn eat(&mut self, b: u8) -> Result<(), SyntaxError> {
        self.ws();
        if self.bytes.get(self.i) == Some(&b) {
            self.i += 1;
            Ok(())
        } else {
            self.fail(&format!("expected `{}`", b as char))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Node, SyntaxError> {
        if depth > MAX_DEPTH {
            return self.fail("nested too deeply");
        }
        self.ws();
        let at = self.i;
        let val = match self.bytes.get(self.i) {
            Some(b'{') => self.object(depth)?,
            Some(b'[') => self.array(depth)?,
            Some(b'"') => Val::Str(self.string()?),
            Some(b't') => self.literal("true", Val::Bool(true))?,
            Some(b'f') => self.literal("false", Val::Bool(false))?,
            Some(b'n') => self.literal("null", Val::Null)?,
            Some(b'-' | b'0'..=b'9') => self.number()?,
            _ => return self.fail("expected a value"),
        };
        Ok(Node { val, at })
    }

    fn literal(&mut self, word: &str, val: Val) -> Result<Val, SyntaxError> {
        if self.text[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(val)
        } else {
            self.fail("expected a value")
        }
    }

    fn number(&mut self) -> Result<Val, SyntaxError> {
        let start = self.i;
        while matches!(
            self.bytes.get(self.i),
            Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
        ) {
            self.i += 1;
        }
        let s = &self.text[start..self.i];
        if let Ok(n) = s.parse::<i64>() {
            return Ok(Val::Int(n));
        }
        match s.parse::<f64>() {
            Ok(f) => Ok(Val::Float(f)),
            Err(_) => self.fail("invalid number"),
        }
    }

    fn string(&mut self) -> Result<String, SyntaxError> {
        let start = self.i;
        self.i += 1;
        loop {
            match self.bytes.get(self.i) {
                Some(b'\\') => self.i += 2,
                Some(b'"') => {
                    self.i += 1;
                    break;
                }
                Some(_) => self.i += 1,
                None => return self.fail("unterminated string"),
            }
        }
        match self.text.get(start..self.i) {
            Some(raw) => serde_json::from_str(raw).or_else(|_| self.fail("invalid string")),
            None => self.fail("invalid string"),
        }
    }

    fn array(&mut self, depth: usize) -> Result<Val, SyntaxError> {
        self.eat(b'[')?;
        let mut items = Vec::new();
        self.ws();
        if self.bytes.get(self.i) == Some(&b']') {
            self.i += 1;
            return Ok(Val::Array(items));
        }
        loop {
            items.push(self.value(depth + 1)?);
            self.ws();
            match self.bytes.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(Val::Array(items));
                }
                _ => return self.fail("expected `,` or `]`"),
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Val, SyntaxError> {
        self.eat(b'{')?;
        let mut entries: Vec<(Key, Node)> = Vec::new();
        self.ws();
        if self.bytes.get(self.i) == Some(&b'}') {
            self.i += 1;
            return Ok(Val::Table(entries));
        }
        loop {
            self.ws();
            let at = self.i;
            if self.bytes.get(self.i) != Some(&b'"') {
                return self.fail("expected a key");
            }
            let name = self.string()?;
            self.eat(b':')?;
            let value = self.value(depth + 1)?;
            if let Some((first, _)) = entries.iter().find(|(k, _)| k.name == name) {
                self.duplicates.push(Duplicate {
                    name: name.clone(),
                    at,
                    first: first.at,
                });
            }
            entries.push((Key { name, at }, value));
            self.ws();
            match self.bytes.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(Val::Table(entries));
                }
                _ => return self.fail("expected `,` or `}`"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_offsets_point_at_keys_and_values() {
        let text = "{\n  \"a\": [1, \"x\\\"y\", {\"b\": null}],\n  \"c\": -2.5e3\n}";
        let (node, dups) = from_json(text).unwrap();
        assert!(dups.is_empty());
        let Val::Table(entries) = &node.val else {
            panic!()
        };
        assert_eq!(&text[entries[0].0.at..entries[0].0.at + 3], "\"a\"");
        let Val::Array(items) = &entries[0].1.val else {
            panic!()
        };
        assert!(matches!(&items[1].val, Val::Str(s) if s == "x\"y"));
        assert_eq!(&text[items[2].at..items[2].at + 1], "{");
        assert!(matches!(entries[1].1.val, Val::Float(f) if f == -2500.0));
    }

    #[test]
    fn json_duplicates_and_syntax_errors() {
        let (_, dups) = from_json("{\"a\": 1, \"a\": 2}").unwrap();
        assert_eq!(dups.len(), 1);
        assert_eq!((dups[0].at, dups[0].first), (9, 1));
        let (at, msg) = from_json("{\n  \"a\": 1,\n}").unwrap_err();
        assert_eq!(at, 12, "{msg}");
        assert_eq!(msg, "invalid JSON: key must be a string");
    }
}
