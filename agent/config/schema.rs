//! The config's shape, checked on the parsed JSON value before serde sees it, so that every
//! type error and unknown key is reported in one pass (serde stops at the first) and a section
//! written as something other than an object (`{"audit": [false]}`, which serde would read as a
//! sequence of fields) is refused. Then the bounds every value must keep: no control characters
//! in any string (each may reach a generated file: YAML readers refuse them, shells and
//! terminals act on them), and sizes where a consumer has a limit.
//!
//! [`FIELDS`] mirrors the serde types in `config/mod.rs`; a unit test keeps the two in step.

use serde_json::{Map, Value};

use super::validate::Problem;

/// What a field holds.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Bool,
    /// An unsigned integer that fits in a u32.
    U32,
    U64,
    Str,
    StrList,
    /// An object whose keys are free (checked later) and whose values are strings.
    StrMap,
    Obj(&'static [Field]),
}

#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub name: &'static str,
    pub kind: Kind,
    /// `null` is accepted (an `Option`: same as absent).
    pub nullable: bool,
    /// Must be present (no serde default).
    pub required: bool,
}

const fn f(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        nullable: false,
        required: false,
    }
}

const fn opt(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        nullable: true,
        required: false,
    }
}

const fn req(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        nullable: false,
        required: true,
    }
}

const USER: &[Field] = &[f("name", Kind::Str), opt("home", Kind::Str)];
const ROOT_ACCESS: &[Field] = &[f("enabled", Kind::Bool), f("groups", Kind::StrList)];
const CODEARTIFACT: &[Field] = &[
    req("domain", Kind::Str),
    req("domain_owner", Kind::Str),
    req("repository", Kind::Str),
    opt("region", Kind::Str),
    opt("endpoint_url", Kind::Str),
    f("duration_secs", Kind::U64),
];
const PIP: &[Field] = &[
    // Exactly one of the two (config::codeartifact::problems says so).
    opt("index_url", Kind::Str),
    opt("codeartifact", Kind::Obj(CODEARTIFACT)),
    f("extra_index_urls", Kind::StrList),
    f("trusted_hosts", Kind::StrList),
    opt("cert", Kind::Str),
    opt("timeout_secs", Kind::U32),
    f("conda_channels", Kind::StrList),
];
const PROXY: &[Field] = &[
    opt("http", Kind::Str),
    opt("https", Kind::Str),
    f("no_proxy", Kind::StrList),
];
const ENVIRONMENT: &[Field] = &[
    opt("vpc", Kind::Str),
    f("subnets", Kind::StrList),
    f("security_groups", Kind::StrList),
    opt("kms_key_id", Kind::Str),
    opt("data_bucket", Kind::Str),
    opt("model_bucket", Kind::Str),
    f("extra", Kind::StrMap),
    f("discover", Kind::Bool),
    opt("imds_endpoint", Kind::Str),
];
const AUDIT: &[Field] = &[
    f("enabled", Kind::Bool),
    opt("paths", Kind::StrList),
    f("excludes", Kind::StrList),
    f("hash_max_bytes", Kind::U64),
    f("log_group", Kind::Str),
    f("log_stream", Kind::Str),
    opt("region", Kind::Str),
    opt("endpoint_url", Kind::Str),
    opt("retention_days", Kind::U32),
    opt("kms_key_id", Kind::Str),
    opt("spool_dir", Kind::Str),
    f("spool_max_bytes", Kind::U64),
    f("heartbeat_secs", Kind::U64),
    f("flush_ms", Kind::U64),
    f("drain_secs", Kind::U64),
    opt("reads", Kind::Obj(READS)),
];
const READS: &[Field] = &[
    req("globs", Kind::StrList),
    f("window_secs", Kind::U64),
    f("summary_after", Kind::U32),
];
const DRIFT: &[Field] = &[f("reapply", Kind::Bool)];

/// The whole document.
pub const FIELDS: &[Field] = &[
    f("user", Kind::Obj(USER)),
    f("root_access", Kind::Obj(ROOT_ACCESS)),
    opt("pip", Kind::Obj(PIP)),
    opt("proxy", Kind::Obj(PROXY)),
    opt("environment", Kind::Obj(ENVIRONMENT)),
    f("audit", Kind::Obj(AUDIT)),
    f("drift", Kind::Obj(DRIFT)),
];

/// Longest string anywhere in the config, in bytes (PATH_MAX; far above any identifier or URL a
/// mirror or proxy needs). Tighter bounds for some fields are in `validate`.
pub const MAX_STRING_BYTES: usize = 4096;
/// Most items in any list and entries in `environment.extra`.
pub const MAX_LIST_ITEMS: usize = 256;

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_u64() || n.is_i64() => "an integer",
        Value::Number(_) => "a floating-point number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn expected(kind: Kind) -> &'static str {
    match kind {
        Kind::Bool => "a boolean (true or false)",
        Kind::U32 => "a whole number from 0 to 4294967295",
        Kind::U64 => "a whole number of 0 or more",
        Kind::Str => "a string",
        Kind::StrList => "an array of strings",
        Kind::StrMap => "an object of strings",
        Kind::Obj(_) => "an object",
    }
}

/// `parent.key`, with the key quoted when it is not a plain name (it may hold anything).
pub fn join(parent: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let key = if plain {
        key.to_string()
    } else {
        format!("{key:?}")
    };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

/// Checks `doc` against [`FIELDS`] and the bounds. Every problem is pushed; a value with the
/// wrong type or an unknown key is removed from `doc`, so that the rest can still be read into
/// the serde types and validated in the same pass.
pub fn check(doc: &mut Value, problems: &mut Vec<Problem>) {
    let Value::Object(map) = doc else {
        problems.push(Problem {
            path: "(document)".to_string(),
            message: format!(
                "invalid type: {}, expected an object (the config is one JSON object)",
                type_name(doc)
            ),
        });
        return;
    };
    check_object(map, FIELDS, "", problems);
}

fn check_object(map: &mut Map<String, Value>, fields: &[Field], at: &str, out: &mut Vec<Problem>) {
    let mut remove = Vec::new();
    for (key, value) in map.iter_mut() {
        let path = join(at, key);
        let Some(field) = fields.iter().find(|f| f.name == key) else {
            let names: Vec<&str> = fields.iter().map(|f| f.name).collect();
            out.push(Problem {
                path,
                message: format!("unknown key; expected one of {}", names.join(", ")),
            });
            remove.push(key.clone());
            continue;
        };
        if value.is_null() && field.nullable {
            continue;
        }
        if !check_value(value, field.kind, &path, out) {
            remove.push(key.clone());
        }
    }
    for key in remove {
        map.remove(&key);
    }
    for field in fields.iter().filter(|f| f.required) {
        if !map.contains_key(field.name) {
            out.push(Problem {
                path: join(at, field.name),
                message: "is required".to_string(),
            });
        }
    }
}

/// Whether `value` may be kept (its type is right; problems inside it are pushed and pruned).
fn check_value(value: &mut Value, kind: Kind, path: &str, out: &mut Vec<Problem>) -> bool {
    let wrong = |out: &mut Vec<Problem>, v: &Value| {
        out.push(Problem {
            path: path.to_string(),
            message: format!(
                "invalid type: {}, expected {}",
                type_name(v),
                expected(kind)
            ),
        });
        false
    };
    match (kind, &mut *value) {
        (Kind::Bool, Value::Bool(_)) => true,
        (Kind::U32, Value::Number(n)) if n.as_u64().is_some_and(|x| x <= u64::from(u32::MAX)) => {
            true
        }
        (Kind::U64, Value::Number(n)) if n.as_u64().is_some() => true,
        (Kind::Str, Value::String(s)) => string_ok(s, path, out),
        (Kind::StrList, Value::Array(items)) => {
            if items.len() > MAX_LIST_ITEMS {
                out.push(Problem {
                    path: path.to_string(),
                    message: format!(
                        "has {} items; at most {MAX_LIST_ITEMS} are allowed",
                        items.len()
                    ),
                });
                return false;
            }
            let mut ok = true;
            for (i, item) in items.iter().enumerate() {
                let p = format!("{path}[{i}]");
                match item {
                    Value::String(s) => ok &= string_ok(s, &p, out),
                    other => {
                        out.push(Problem {
                            path: p,
                            message: format!(
                                "invalid type: {}, expected a string",
                                type_name(other)
                            ),
                        });
                        ok = false;
                    }
                }
            }
            ok
        }
        (Kind::StrMap, Value::Object(m)) => {
            if m.len() > MAX_LIST_ITEMS {
                out.push(Problem {
                    path: path.to_string(),
                    message: format!(
                        "has {} entries; at most {MAX_LIST_ITEMS} are allowed",
                        m.len()
                    ),
                });
                return false;
            }
            let mut ok = true;
            for (k, v) in m.iter() {
                let p = join(path, k);
                ok &= string_ok(k, &format!("{p} (key)"), out);
                match v {
                    Value::String(s) => ok &= string_ok(s, &p, out),
                    other => {
                        out.push(Problem {
                            path: p,
                            message: format!(
                                "invalid type: {}, expected a string",
                                type_name(other)
                            ),
                        });
                        ok = false;
                    }
                }
            }
            ok
        }
        (Kind::Obj(fields), Value::Object(m)) => {
            check_object(m, fields, path, out);
            true
        }
        (_, v) => wrong(out, v),
    }
}

/// The characters no config string may hold: every C0 control (tab and newline included), DEL,
/// every C1 control, the Unicode line and paragraph separators (YAML and JavaScript line breaks),
/// the byte-order mark, and the noncharacters (U+FDD0–U+FDEF, U+xxFFFE, U+xxFFFF), which PyYAML
/// and ruamel.yaml refuse to read.
pub fn forbidden_char(c: char) -> bool {
    let cp = u32::from(c);
    c.is_control()
        || matches!(cp, 0x2028 | 0x2029 | 0xFEFF | 0xFDD0..=0xFDEF)
        || (cp & 0xFFFE) == 0xFFFE
}

/// Whether `s` is within the bounds; pushes the problem when not. Never echoes `s`.
fn string_ok(s: &str, path: &str, out: &mut Vec<Problem>) -> bool {
    if let Some((i, c)) = s.chars().enumerate().find(|(_, c)| forbidden_char(*c)) {
        out.push(Problem {
            path: path.to_string(),
            message: format!(
                "contains the control character U+{:04X} at character {}; control characters are not allowed",
                u32::from(c),
                i + 1
            ),
        });
        return false;
    }
    if s.len() > MAX_STRING_BYTES {
        out.push(Problem {
            path: path.to_string(),
            message: format!(
                "is {} bytes long; at most {MAX_STRING_BYTES} are allowed",
                s.len()
            ),
        });
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn keys(fields: &[Field], at: &str, out: &mut Vec<String>) {
        for fl in fields {
            let p = join(at, fl.name);
            out.push(p.clone());
            if let Kind::Obj(inner) = fl.kind {
                keys(inner, &p, out);
            }
        }
    }

    fn value_keys(v: &Value, at: &str, out: &mut Vec<String>) {
        if let Value::Object(m) = v {
            for (k, x) in m {
                if at.ends_with("extra") {
                    continue;
                }
                let p = join(at, k);
                out.push(p.clone());
                value_keys(x, &p, out);
            }
        }
    }

    /// The table and the serde types name the same keys: a field added to one must be added to
    /// the other.
    #[test]
    fn schema_matches_the_serde_types() {
        let c = Config {
            pip: Some(
                serde_json::from_str(
                    r#"{"index_url": "https://m.corp/simple", "codeartifact": {"domain": "corp", "domain_owner": "123456789012", "repository": "pypi"}}"#,
                )
                .expect("pip"),
            ),
            proxy: Some(serde_json::from_str(r#"{"http": "http://p:1"}"#).expect("proxy")),
            environment: Some(Default::default()),
            audit: crate::config::AuditConfig {
                reads: Some(serde_json::from_str(r#"{"globs": ["*.csv"]}"#).expect("reads")),
                ..Default::default()
            },
            ..Default::default()
        };
        let v = serde_json::to_value(&c).expect("serialises");
        let mut from_serde = Vec::new();
        value_keys(&v, "", &mut from_serde);
        let mut from_table = Vec::new();
        keys(FIELDS, "", &mut from_table);
        from_serde.sort();
        from_table.sort();
        assert_eq!(from_serde, from_table);
        let mut problems = Vec::new();
        let mut v = v;
        check(&mut v, &mut problems);
        assert_eq!(problems, []);
    }

    #[test]
    fn forbidden_chars() {
        for c in [
            '\0', '\t', '\n', '\x1b', '\x7f', '\u{85}', '\u{9f}', '\u{2028}', '\u{feff}',
        ] {
            assert!(forbidden_char(c), "{c:?}");
        }
        for c in ['\u{fffe}', '\u{ffff}', '\u{1fffe}', '\u{fdd0}'] {
            assert!(forbidden_char(c), "{c:?}");
        }
        for c in ['a', ' ', 'é', '€', '\u{a0}', '\u{fffd}', '\u{1f600}'] {
            assert!(!forbidden_char(c), "{c:?}");
        }
    }
}
