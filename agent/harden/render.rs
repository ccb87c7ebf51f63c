//! Small renderers shared by the controls: quoting for shell, systemd, Python and git, and the
//! managed block the agent keeps inside files it shares with others (`/etc/gitconfig`,
//! `/etc/bashrc`). Every renderer is deterministic.

/// A POSIX shell single-quoted word.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A double-quoted systemd `Environment=` assignment: `%` is a specifier, `\` and `"` escape.
pub fn systemd_env(key: &str, value: &str) -> String {
    let v = value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('%', "%%");
    format!("Environment=\"{key}={v}\"")
}

/// A Python (and YAML) string literal: JSON's string syntax is valid in both.
pub fn py_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

/// A git config value in double quotes.
pub fn git_value(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', r"\\").replace('"', "\\\""))
}

const BEGIN: &str = "BEGIN notebook-agent (managed: changes are reverted)";
const END: &str = "END notebook-agent";

/// `existing` with the agent's block (between comment markers) replaced by `body`, or appended
/// when there is none. Every line outside the block is kept byte for byte.
pub fn with_block(existing: &str, comment: &str, body: &str) -> String {
    let begin = format!("{comment} {BEGIN}");
    let end = format!("{comment} {END}");
    let mut block = format!("{begin}\n{body}");
    if !block.ends_with('\n') {
        block.push('\n');
    }
    block.push_str(&end);
    block.push('\n');

    let mut out = String::with_capacity(existing.len() + block.len());
    let mut lines = existing.split_inclusive('\n').peekable();
    let mut placed = false;
    while let Some(line) = lines.next() {
        if line.trim_end() == begin && !placed {
            // Skip to the end marker (or the end of the file if it was cut).
            for l in lines.by_ref() {
                if l.trim_end() == end {
                    break;
                }
            }
            out.push_str(&block);
            placed = true;
            continue;
        }
        out.push_str(line);
    }
    if !placed {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&block);
    }
    out
}

/// A root-owned 0644 file with exactly these contents (what the user must not change).
pub fn root_file(path: std::path::PathBuf, contents: String) -> crate::control::Action {
    crate::control::Action::Write {
        path,
        spec: crate::host::FileSpec {
            contents: contents.into_bytes(),
            mode: 0o644,
            owner: crate::host::Owner::ROOT,
        },
        validation: None,
    }
}

/// A root-owned 0755 directory.
pub fn root_dir(path: &str) -> crate::control::Action {
    crate::control::Action::EnsureDir {
        path: std::path::PathBuf::from(path),
        mode: 0o755,
        owner: crate::host::Owner::ROOT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
        assert_eq!(
            systemd_env("http_proxy", "http://u:p%40ss@h:3128"),
            "Environment=\"http_proxy=http://u:p%%40ss@h:3128\""
        );
        assert_eq!(py_str("a\"b\\c\nd é"), "\"a\\\"b\\\\c\\nd é\"");
        assert_eq!(git_value(r#"a"b\"#), r#""a\"b\\""#);
    }

    #[test]
    fn managed_block_is_replaced_in_place_and_appended_once() {
        let orig = "[user]\n\tname = x\n";
        let once = with_block(orig, "#", "[http]\n\tproxy = a\n");
        assert!(once.starts_with(orig));
        let twice = with_block(&once, "#", "[http]\n\tproxy = b\n");
        assert_eq!(twice.matches("BEGIN notebook-agent").count(), 1);
        assert!(twice.contains("proxy = b") && !twice.contains("proxy = a"));
        assert_eq!(with_block(&twice, "#", "[http]\n\tproxy = b\n"), twice);
        let no_newline = with_block("x = 1", "#", "y");
        assert!(no_newline.starts_with("x = 1\n# BEGIN"));
    }

    /// The passwords of issue 13: each character some generated file escapes.
    const NASTY: &[&str] = &[
        "SE'KRIT",
        "SE\"KRIT",
        "SE%KRIT",
        "SE%5CKRIT",
        "SE$KRIT",
        "SE'\"%25%$KRIT",
    ];

    #[test]
    fn the_redaction_hides_every_form_these_renderers_write_of_a_password_is_scrubbed() {
        for pw in NASTY {
            let raw = format!("http://bob:{pw}@proxy.corp:3128");
            let r = crate::config::Redactor::new([&crate::config::SecretUrl::new(raw.clone())]);
            for shown in [
                raw.clone(),
                shell_quote(&raw),
                systemd_env("HTTPS_PROXY", &raw),
                py_str(&raw),
                git_value(&raw),
                serde_json::to_string(&py_str(&raw)).expect("json"),
                format!("proxy = {raw}"),
            ] {
                let out = r.scrub(&shown);
                assert!(!out.contains("KRIT"), "{pw:?}: {shown} -> {out}");
                assert!(
                    out.contains(crate::config::secret::REDACTED),
                    "{pw:?}: {out}"
                );
            }
        }
    }
}
