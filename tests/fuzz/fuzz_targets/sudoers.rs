//! The root-rights control's text editing on arbitrary file contents: sudoers (taking every grant
//! to the notebook user out) and /etc/group + /etc/gshadow (taking the user out of a group). The
//! bytes are read as the control reads them (`from_utf8_lossy`).
//!
//! Invariants, sudoers: nothing in the output grants the user anything (as the agent's parser sees
//! it), editing is idempotent, `None` exactly when nothing granted, every logical line that did not
//! grant is kept in order and unchanged, each removed grant leaves exactly one comment line, and
//! the user aliases are untouched. Group files: the user is in no member list of the group
//! afterwards, editing is idempotent and every other line is kept byte for byte.
#![no_main]

#[path = "common/mod.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use notebook_agent::harden::sudoers;
use notebook_agent::host::users::without_member;

const MARK: &str = "# notebook-agent removed: ";

fn check_sudoers(text: &str) {
    let who = common::ec2_user();
    let aliases = sudoers::user_aliases(text);
    let found = sudoers::grants(text, &who, &aliases);
    let Some(out) = sudoers::without_grants(text, &who, &aliases) else {
        assert!(found.is_empty(), "grants found but nothing removed");
        return;
    };
    assert!(!found.is_empty(), "edited although nothing granted");
    let out_aliases = sudoers::user_aliases(&out);
    assert_eq!(out_aliases, aliases, "user aliases changed");
    let left = sudoers::grants(&out, &who, &out_aliases);
    assert!(left.is_empty(), "output still grants: {left:?}");
    assert_eq!(
        sudoers::without_grants(&out, &who, &out_aliases),
        None,
        "editing is not idempotent"
    );

    // The output, logical line by logical line, is the input with each grant replaced by one
    // comment naming it (backslashes dropped so that the comment never continues).
    let expected: Vec<String> = sudoers::logical_lines(text)
        .into_iter()
        .map(|l| {
            if found.contains(&l) {
                let shown: String = l.text.chars().filter(|c| *c != '\\').collect();
                format!("{MARK}{shown}").trim().to_string()
            } else {
                l.text
            }
        })
        .collect();
    let got: Vec<String> = sudoers::logical_lines(&out)
        .into_iter()
        .map(|l| l.text)
        .collect();
    assert_eq!(got, expected, "lines that granted nothing were changed");
    for l in sudoers::logical_lines(&out) {
        if l.text.starts_with(MARK.trim_end()) {
            assert!(
                matches!(sudoers::classify(&l.text), sudoers::LineKind::Comment),
                "removal comment is not a comment"
            );
        }
    }
}

fn check_group(text: &str, group: &str, gshadow: bool) {
    let user = "ec2-user";
    let Some(out) = without_member(text, group, user, gshadow) else {
        return;
    };
    assert_eq!(
        without_member(&out, group, user, gshadow),
        None,
        "group edit is not idempotent"
    );
    let before: Vec<&str> = text.split_inclusive('\n').collect();
    let after: Vec<&str> = out.split_inclusive('\n').collect();
    assert_eq!(
        before.len(),
        after.len(),
        "group edit changed the line count"
    );
    let lists: &[usize] = if gshadow { &[2, 3] } else { &[3] };
    for (b, a) in before.iter().zip(&after) {
        let fields: Vec<&str> = a.trim_end_matches('\n').split(':').collect();
        if fields.first() == Some(&group) && fields.len() >= 4 {
            for &i in lists {
                assert!(
                    !fields[i].split(',').any(|m| m.trim() == user),
                    "{user} still in {group}: {a:?}"
                );
            }
            assert_eq!(
                b.split(':').count(),
                a.split(':').count(),
                "group line lost fields"
            );
        } else {
            assert_eq!(b, a, "a line of another group changed");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    check_sudoers(&text);
    for group in ["wheel", "docker"] {
        check_group(&text, group, false);
        check_group(&text, group, true);
    }
});
