//! A process's command line as it may be shipped: secrets replaced by `REDACTED`, length bounded.
//!
//! The rules, applied per argument (a record never carries these in clear):
//! - an option whose name says secret (`--password x`, `--password=x`, `--api-key x`, `--token=…`,
//!   `-p` is *not* one: too many tools use it for other things) → its value;
//! - an environment-style `NAME=value` whose NAME says secret (`AWS_SECRET_ACCESS_KEY=…`,
//!   `GITHUB_TOKEN=…`, `DB_PASSWORD=…`, `*SECRET*=…`) → the value;
//! - a URL anywhere in an argument → its user-info and secret-looking query values, by the same
//!   code that prints configured URLs ([`SecretUrl::redacted`]);
//! - an `Authorization:` header value (`curl -H 'Authorization: Bearer …'`);
//! - inside an argument that is a script (`sh -c "… --password x …"`): the same rules per word.
//!
//! Over-redacting a harmless value is accepted; shipping a credential is not.

use crate::config::secret::{SecretUrl, REDACTED};

/// Longest command line kept, in bytes (a record stays small; the rest is cut with a marker).
pub const MAX_CMD_LINE: usize = 2048;

/// Words that make an option or variable name secret (compared case-insensitively, with `-`
/// and `_` treated alike).
const SECRET_WORDS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "apikey",
    "api_key",
    "access_key",
    "private_key",
    "credential",
    "session_key",
];

fn secret_name(name: &str) -> bool {
    let n = name
        .trim_start_matches('-')
        .to_ascii_lowercase()
        .replace('-', "_");
    !n.is_empty() && SECRET_WORDS.iter().any(|w| n.contains(w))
}

/// `NAME=value` with NAME a shell variable name.
fn env_assignment(arg: &str) -> Option<(&str, &str)> {
    let (k, v) = arg.split_once('=')?;
    let mut chars = k.chars();
    let first = chars.next()?;
    ((first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_'))
    .then_some((k, v))
}

/// Every `scheme://…` in `text` with its credentials replaced.
fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        // The scheme: letters, digits, `+.-` before "://".
        let start = rest[..i]
            .char_indices()
            .rev()
            .take_while(|(_, c)| c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '-'))
            .last()
            .map_or(i, |(j, _)| j);
        let end = rest[i..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`'))
            .map_or(rest.len(), |e| i + e);
        out.push_str(&rest[..start]);
        let url = &rest[start..end];
        if start == i {
            // No scheme: not a URL; keep "://" and go on.
            out.push_str(&rest[i..i + 3]);
            rest = &rest[i + 3..];
            continue;
        }
        let shown = SecretUrl::new(url).redacted();
        if shown.starts_with("<unparsable") {
            // Not parsable as a URL: drop anything that looks like user-info.
            match url.find('@') {
                Some(at) => {
                    out.push_str(&url[..i - start + 3]);
                    out.push_str(REDACTED);
                    out.push_str(&url[at..]);
                }
                None => out.push_str(url),
            }
        } else {
            out.push_str(&shown);
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// The arguments with secrets replaced (see the module doc).
pub fn redact_args(argv: &[String]) -> Vec<String> {
    redact(argv, true)
}

/// A script inside one argument (`sh -c "… --password x …"`, `bash -ic '…'`): its words get the
/// same rules. A quoted value is one word up to its closing quote, so a value after a secret
/// option is hidden whole. Whitespace is normalised to single spaces.
fn redact_script(text: &str) -> String {
    let mut words: Vec<String> = Vec::new();
    let mut open: Option<char> = None;
    for w in text.split_whitespace() {
        match (open, words.last_mut()) {
            (Some(q), Some(last)) => {
                last.push(' ');
                last.push_str(w);
                if w.ends_with(q) {
                    open = None;
                }
            }
            _ => {
                let q = w.chars().next().filter(|c| matches!(c, '\'' | '"'));
                open = q.filter(|q| !(w.len() > 1 && w.ends_with(*q)));
                words.push(w.to_string());
            }
        }
    }
    redact(&words, false).join(" ")
}

fn redact(argv: &[String], scripts: bool) -> Vec<String> {
    let mut out = Vec::with_capacity(argv.len());
    let mut hide_next = false;
    let mut auth_next = false;
    for arg in argv {
        if hide_next {
            hide_next = false;
            out.push(REDACTED.to_string());
            continue;
        }
        let lower = arg.to_ascii_lowercase();
        if let Some(pos) = lower.find("authorization:") {
            let keep = pos + "authorization:".len();
            out.push(format!("{} {REDACTED}", &arg[..keep]));
            continue;
        }
        if scripts && arg.contains(char::is_whitespace) {
            out.push(redact_script(arg));
            continue;
        }
        if auth_next && lower.starts_with("bearer ") {
            auth_next = false;
            out.push(format!("Bearer {REDACTED}"));
            continue;
        }
        auth_next = false;
        if arg.starts_with('-') {
            match arg.split_once('=') {
                Some((name, _)) if secret_name(name) => {
                    out.push(format!("{name}={REDACTED}"));
                    continue;
                }
                None if secret_name(arg) && arg.len() > 2 => {
                    hide_next = true;
                    out.push(arg.clone());
                    continue;
                }
                _ => {}
            }
        } else if let Some((k, _)) = env_assignment(arg) {
            if secret_name(k) {
                out.push(format!("{k}={REDACTED}"));
                continue;
            }
        }
        out.push(redact_urls(arg));
    }
    out
}

/// The redacted arguments joined by spaces, cut to [`MAX_CMD_LINE`] bytes.
pub fn cmd_line(argv: &[String]) -> String {
    let mut s = redact_args(argv).join(" ");
    if s.len() > MAX_CMD_LINE {
        let mut cut = MAX_CMD_LINE;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str(" …[cut]");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(args: &[&str]) -> String {
        cmd_line(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn secrets_inside_a_script_argument_are_redacted() {
        for (args, secret) in [
            (
                vec![
                    "bash",
                    "-ic",
                    "cd x && sh -c 'echo x >$0' f --password hx-s3cr3t && true",
                ],
                "hx-s3cr3t",
            ),
            (
                vec![
                    "sh",
                    "-c",
                    "mysql --password 'two words'\n AWS_SECRET_ACCESS_KEY=abc1 aws s3 ls",
                ],
                "two words",
            ),
            (
                vec!["sh", "-c", "AWS_SECRET_ACCESS_KEY=abc1 aws s3 ls"],
                "abc1",
            ),
            (vec!["sh", "-c", "tool --api-key=k3y-9 run"], "k3y-9"),
            (
                vec![
                    "sh",
                    "-c",
                    "curl -H 'Authorization: Bearer tok-77' https://u:pw-5@h/x",
                ],
                "tok-77",
            ),
            (vec!["sh", "-c", "curl https://u:pw-5@h/x"], "pw-5"),
        ] {
            let l = line(&args);
            assert!(!l.contains(secret), "{secret} in {l}");
            assert!(l.contains("REDACTED"), "{l}");
        }
        assert!(!line(&["sh", "-c", "mysql --password 'two words' -e x"]).contains("words"));
        assert_eq!(line(&["sh", "-c", "ls  -l\tdata"]), "sh -c ls -l data");
    }

    #[test]
    fn options_variables_urls_and_headers_lose_their_secrets() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["mysql", "--password", "hunter2", "db"],
                "mysql --password REDACTED db",
            ),
            (&["tool", "--password=hunter2"], "tool --password=REDACTED"),
            (
                &["tool", "--api-key", "AKIAXXXX", "--region", "eu-west-1"],
                "tool --api-key REDACTED --region eu-west-1",
            ),
            (&["tool", "--auth-token=abc"], "tool --auth-token=REDACTED"),
            (
                &[
                    "env",
                    "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG",
                    "aws",
                    "s3",
                    "ls",
                ],
                "env AWS_SECRET_ACCESS_KEY=REDACTED aws s3 ls",
            ),
            (
                &["env", "GITHUB_TOKEN=ghp_abc", "HF_TOKEN=hf_x", "PATH=/bin"],
                "env GITHUB_TOKEN=REDACTED HF_TOKEN=REDACTED PATH=/bin",
            ),
            (
                &["env", "MY_SECRET_THING=x"],
                "env MY_SECRET_THING=REDACTED",
            ),
            (
                &["git", "clone", "https://user:ghp_tok@github.com/o/r.git"],
                "git clone https://REDACTED:REDACTED@github.com/o/r.git",
            ),
            (
                &[
                    "pip",
                    "install",
                    "--index-url=https://u:p4ss@pypi.corp/simple",
                    "x",
                ],
                "pip install --index-url=https://REDACTED:REDACTED@pypi.corp/simple x",
            ),
            (
                &["curl", "https://h/x?token=abcd&y=1"],
                "curl https://h/x?token=REDACTED&y=1",
            ),
            (
                &["curl", "-H", "Authorization: Bearer eyJhbGc"],
                "curl -H Authorization: REDACTED",
            ),
            (&["cp", "a b", "c"], "cp a b c"),
            (
                &[
                    "python",
                    "-m",
                    "ipykernel_launcher",
                    "-f",
                    "/r/kernel-1.json",
                ],
                "python -m ipykernel_launcher -f /r/kernel-1.json",
            ),
        ];
        for (args, want) in cases {
            assert_eq!(line(args), *want, "{args:?}");
        }
    }

    #[test]
    fn long_command_lines_are_cut_on_a_char_boundary() {
        let long = "é".repeat(MAX_CMD_LINE);
        let s = line(&["x", &long]);
        assert!(s.len() <= MAX_CMD_LINE + 16, "{}", s.len());
        assert!(s.ends_with("…[cut]"));
    }
}
