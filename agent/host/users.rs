//! User and group lookup from `etc/passwd` and `etc/group` under the root. A static musl binary
//! has no NSS, and a prefix root is not the running system's database, so the files are read
//! directly (SageMaker notebooks keep ec2-user in these files).

use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Uid};

use super::root::Root;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
    pub home: PathBuf,
    pub shell: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: Gid,
    pub members: Vec<String>,
}

/// The user and group database of one root.
#[derive(Debug, Clone, Default)]
pub struct UserDb {
    pub users: Vec<PasswdEntry>,
    pub groups: Vec<GroupEntry>,
}

impl UserDb {
    pub const PASSWD: &'static str = "/etc/passwd";
    pub const GROUP: &'static str = "/etc/group";

    /// Reads both files under `root`. A missing file is an empty database.
    pub fn load(root: &Root) -> Result<Self, String> {
        let read = |p: &str| -> Result<String, String> {
            match std::fs::read_to_string(root.path(p)) {
                Ok(s) => Ok(s),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
                Err(e) => Err(format!("{p}: {e}")),
            }
        };
        Ok(Self {
            users: parse_passwd(&read(Self::PASSWD)?),
            groups: parse_group(&read(Self::GROUP)?),
        })
    }

    pub fn user(&self, name: &str) -> Option<&PasswdEntry> {
        self.users.iter().find(|u| u.name == name)
    }

    pub fn user_by_uid(&self, uid: Uid) -> Option<&PasswdEntry> {
        self.users.iter().find(|u| u.uid == uid)
    }

    pub fn group(&self, name: &str) -> Option<&GroupEntry> {
        self.groups.iter().find(|g| g.name == name)
    }

    pub fn group_by_gid(&self, gid: Gid) -> Option<&GroupEntry> {
        self.groups.iter().find(|g| g.gid == gid)
    }

    /// Names of every group `user` belongs to: the primary group, then supplementary ones in
    /// file order.
    pub fn groups_of(&self, user: &str) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(primary) = self.user(user).and_then(|u| self.group_by_gid(u.gid)) {
            out.push(primary.name.clone());
        }
        for g in &self.groups {
            if g.members.iter().any(|m| m == user) && !out.contains(&g.name) {
                out.push(g.name.clone());
            }
        }
        out
    }

    /// The home directory of `user` from passwd, else `fallback`.
    pub fn home_of(&self, user: &str, fallback: &Path) -> PathBuf {
        self.user(user)
            .map(|u| u.home.clone())
            .unwrap_or_else(|| fallback.to_path_buf())
    }
}

/// The login UID range from `/etc/login.defs` (shadow-utils): accounts outside it are system
/// accounts. Missing file or keys: shadow-utils' defaults, 1000 and 60000.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginDefs {
    pub uid_min: u32,
    pub uid_max: u32,
}

impl Default for LoginDefs {
    fn default() -> Self {
        Self {
            uid_min: 1000,
            uid_max: 60000,
        }
    }
}

impl LoginDefs {
    pub const PATH: &'static str = "/etc/login.defs";

    /// Reads the root's `/etc/login.defs`; unreadable or missing means the defaults.
    pub fn load(root: &Root) -> Self {
        std::fs::read_to_string(root.path(Self::PATH))
            .map(|t| Self::parse(&t))
            .unwrap_or_default()
    }

    /// `KEY VALUE` lines, `#` comments; an unparsable value keeps the default.
    pub fn parse(text: &str) -> Self {
        let mut out = Self::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let (Some(key), Some(value)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = value.parse::<u32>() else {
                continue;
            };
            match key {
                "UID_MIN" => out.uid_min = n,
                "UID_MAX" => out.uid_max = n,
                _ => {}
            }
        }
        out
    }
}

fn fields(line: &str) -> Option<Vec<&str>> {
    let line = line.trim_end_matches('\r');
    if line.is_empty() || line.starts_with('#') || line.starts_with('+') || line.starts_with('-') {
        return None;
    }
    Some(line.split(':').collect())
}

pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter_map(fields)
        .filter_map(|f| {
            if f.len() < 7 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: Uid::from_raw(f[2].parse().ok()?),
                gid: Gid::from_raw(f[3].parse().ok()?),
                home: PathBuf::from(f[5]),
                shell: f[6].to_string(),
            })
        })
        .collect()
}

pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter_map(fields)
        .filter_map(|f| {
            if f.len() < 4 {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: Gid::from_raw(f[2].parse().ok()?),
                members: f[3]
                    .split(',')
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                    .map(str::to_string)
                    .collect(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        # comment\n\
        ec2-user:x:1000:1000:EC2 Default User:/home/ec2-user:/bin/bash\n\
        broken-line\n";
    const GROUP: &str = "root:x:0:\nwheel:x:10:ec2-user\nec2-user:x:1000:\n\
        docker:x:992:ec2-user,alice\nadm:x:4:\n";

    #[test]
    fn parses_and_resolves_memberships() {
        let db = UserDb {
            users: parse_passwd(PASSWD),
            groups: parse_group(GROUP),
        };
        assert_eq!(db.users.len(), 2);
        let u = db.user("ec2-user").expect("ec2-user");
        assert_eq!(u.uid, Uid::from_raw(1000));
        assert_eq!(u.home, PathBuf::from("/home/ec2-user"));
        assert_eq!(db.groups_of("ec2-user"), ["ec2-user", "wheel", "docker"]);
        assert_eq!(db.groups_of("alice"), ["docker"]);
        assert!(db.group("adm").is_some_and(|g| g.members.is_empty()));
    }

    #[test]
    fn login_defs_uid_range() {
        let d = LoginDefs::parse("# c\nUID_MIN\t\t 500\nUID_MAX 59999\nGID_MIN 7\nUID_MIN x\n");
        assert_eq!((d.uid_min, d.uid_max), (500, 59999));
        assert_eq!(LoginDefs::parse(""), LoginDefs::default());
    }
}

/// `etc/group` or `etc/gshadow` text with `user` taken out of `group`'s member list (and, in
/// gshadow, its administrator list: a group admin can add themselves back with gpasswd). Every
/// other byte is kept. `None` when the user was not listed.
pub fn without_member(text: &str, group: &str, user: &str, gshadow: bool) -> Option<String> {
    let mut changed = false;
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let (body, nl) = match line.strip_suffix('\n') {
            Some(b) => (b, "\n"),
            None => (line, ""),
        };
        let mut f: Vec<String> = body.split(':').map(str::to_string).collect();
        if f.first().map(String::as_str) == Some(group) && f.len() >= 4 {
            let lists: &[usize] = if gshadow { &[2, 3] } else { &[3] };
            for &i in lists {
                let members: Vec<&str> = f[i].split(',').filter(|m| !m.is_empty()).collect();
                if members.iter().any(|m| m.trim() == user) {
                    f[i] = members
                        .into_iter()
                        .filter(|m| m.trim() != user)
                        .collect::<Vec<_>>()
                        .join(",");
                    changed = true;
                }
            }
            out.push_str(&f.join(":"));
            out.push_str(nl);
        } else {
            out.push_str(line);
        }
    }
    changed.then_some(out)
}

#[cfg(test)]
mod edit_tests {
    use super::without_member;

    #[test]
    fn removes_only_that_member_and_keeps_every_other_byte() {
        let g =
            "root:x:0:\nwheel:x:10:alice,ec2-user,bob\ndocker:x:992:ec2-user\nadm:x:4:ec2-users\n";
        assert_eq!(
            without_member(g, "wheel", "ec2-user", false).as_deref(),
            Some("root:x:0:\nwheel:x:10:alice,bob\ndocker:x:992:ec2-user\nadm:x:4:ec2-users\n")
        );
        assert_eq!(
            without_member(g, "docker", "ec2-user", false).as_deref(),
            Some("root:x:0:\nwheel:x:10:alice,ec2-user,bob\ndocker:x:992:\nadm:x:4:ec2-users\n")
        );
        assert_eq!(without_member(g, "adm", "ec2-user", false), None);
        let gs = "wheel:!::ec2-user\ndocker:!:ec2-user:\n";
        assert_eq!(
            without_member(gs, "docker", "ec2-user", true).as_deref(),
            Some("wheel:!::ec2-user\ndocker:!::\n")
        );
    }
}
