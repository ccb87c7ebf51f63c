//! Which Jupyter kernel or terminal a process belongs to, from facts that are reliable:
//!
//! - **A kernel** is started by jupyter-server with its connection file on the command line:
//!   `python -m ipykernel_launcher -f …/runtime/kernel-<id>.json` (IRkernel and others pass the
//!   same file). The kernel id is the file's name between `kernel-` and `.json`; it is what
//!   jupyter-server's `/api/kernels` and `/api/sessions` use (the notebook path is in the session
//!   list, which needs the server's token: not read here).
//! - **A terminal** is a shell that jupyter-server spawns through terminado on a new pty.
//!   terminado puts `PYXTERM_DIMENSIONS` in the shell's environment (terminado
//!   `management.py`, `make_term_env`) and nothing with the terminal's name: the name ("1", "2",
//!   …) lives only in the server's memory. So a terminal is identified by its shell (pid, start
//!   time) and its tty (`pts/N`, from `/proc/<pid>/stat`), which is what an investigator can
//!   match against the terminal's scrollback or `who`.
//! - **The server** is recognised by its command line (`jupyter-lab`, `jupyter-notebook`,
//!   `jupyter-server`, `jupyter lab`, `-m jupyter_server`, …).
//!
//! argv[0] can be anything the process likes (`exec -a jupyter …`): a role is only a label, the
//! record always carries the real `exe` beside it.

use std::path::Path;
use std::sync::Arc;

use super::table::{ProcessInfo, ProcessTable};

/// What a process is to Jupyter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JupyterRole {
    Server,
    Kernel {
        id: String,
    },
    /// A terminal's shell; `tty` like `pts/3` when it has one.
    Terminal {
        tty: Option<String>,
    },
}

/// The kernel id in a command line: the name of a `kernel-<id>.json` connection file given as an
/// argument (`-f path`, `-f=path`, `--f=path`, `--KernelApp.connection_file=path`, or bare).
pub fn kernel_id(argv: &[String]) -> Option<String> {
    argv.iter().skip(1).find_map(|a| {
        let value = a.rsplit_once('=').map_or(a.as_str(), |(_, v)| v);
        let name = Path::new(value).file_name()?.to_str()?;
        let id = name.strip_prefix("kernel-")?.strip_suffix(".json")?;
        (!id.is_empty()
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .then(|| id.to_string())
    })
}

/// The command line of a Jupyter server.
pub fn is_server(argv: &[String]) -> bool {
    const SERVERS: &[&str] = &[
        "jupyter-lab",
        "jupyter-notebook",
        "jupyter-server",
        "jupyter-labhub",
        "jupyterhub-singleuser",
    ];
    const SUBCOMMANDS: &[&str] = &["lab", "notebook", "server", "labhub"];
    const MODULES: &[&str] = &["jupyter_server", "jupyterlab", "notebook", "jupyter"];
    let base = |s: &str| {
        Path::new(s)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_string()
    };
    for (i, a) in argv.iter().enumerate().take(4) {
        let b = base(a);
        if SERVERS.contains(&b.as_str()) {
            return true;
        }
        if b == "jupyter" {
            return argv
                .get(i + 1)
                .is_some_and(|s| SUBCOMMANDS.contains(&s.as_str()));
        }
        if a == "-m" {
            return argv.get(i + 1).is_some_and(|m| {
                MODULES.contains(&m.as_str())
                    && (m != "jupyter"
                        || argv
                            .get(i + 2)
                            .is_some_and(|s| SUBCOMMANDS.contains(&s.as_str())))
            });
        }
    }
    false
}

/// The role a process has from its own command line (kernel, server). A terminal needs its
/// parent and environment: [`terminal_role`].
pub fn own_role(argv: &[String]) -> Option<JupyterRole> {
    if let Some(id) = kernel_id(argv) {
        return Some(JupyterRole::Kernel { id });
    }
    is_server(argv).then_some(JupyterRole::Server)
}

/// A terminal shell: a child of the server with terminado's variable in its environment
/// (`environ` is `/proc/<pid>/environ`, NUL-separated; only the variable's presence is looked
/// at, nothing of the environment is kept).
pub fn terminal_role(
    parent_is_server: bool,
    environ: &[u8],
    tty: Option<String>,
) -> Option<JupyterRole> {
    let has = environ
        .split(|b| *b == 0)
        .any(|kv| kv.starts_with(b"PYXTERM_DIMENSIONS="));
    (parent_is_server && has).then_some(JupyterRole::Terminal { tty })
}

/// The kernel or terminal a process descends from (itself included), with the process that has
/// the role; the walk stops at the server, at pid 1 or after 64 generations.
pub fn descent(
    table: &ProcessTable,
    info: &Arc<ProcessInfo>,
) -> Option<(JupyterRole, Arc<ProcessInfo>)> {
    let mut cur = Arc::clone(info);
    for _ in 0..64 {
        match &cur.jupyter {
            Some(JupyterRole::Server) => return None,
            Some(role) => return Some((role.clone(), cur)),
            None => {}
        }
        if cur.pid <= 1 {
            return None;
        }
        cur = table.parent(&cur)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn kernel_ids_come_from_the_connection_file() {
        let id = "5f2b6b5e-1c1a-4c9a-9d7e-0c7a3e2f1b11";
        let file = format!("/home/ec2-user/.local/share/jupyter/runtime/kernel-{id}.json");
        for argv in [
            v(&[
                "/home/ec2-user/anaconda3/envs/python3/bin/python",
                "-m",
                "ipykernel_launcher",
                "-f",
                &file,
            ]),
            v(&["python", "-m", "ipykernel_launcher", &format!("-f={file}")]),
            v(&[
                "python",
                "-m",
                "ipykernel",
                &format!("--KernelApp.connection_file={file}"),
            ]),
            v(&["R", "--slave", "-e", "IRkernel::main()", "--args", &file]),
        ] {
            assert_eq!(kernel_id(&argv).as_deref(), Some(id), "{argv:?}");
            assert_eq!(own_role(&argv), Some(JupyterRole::Kernel { id: id.into() }));
        }
        for argv in [
            v(&["cat", "kernel-.json"]),
            v(&["python", "train.py"]),
            v(&["cp", "/tmp/kernel-x y.json", "b"]),
            v(&["kernel-abc.json"]),
        ] {
            assert_eq!(kernel_id(&argv), None, "{argv:?}");
        }
    }

    #[test]
    fn servers_and_terminals_are_recognised() {
        for argv in [
            v(&[
                "/home/ec2-user/anaconda3/bin/python3",
                "/home/ec2-user/anaconda3/bin/jupyter-lab",
                "--no-browser",
            ]),
            v(&["/usr/bin/python3", "/usr/local/bin/jupyter-notebook"]),
            v(&["jupyter", "lab", "--port", "8443"]),
            v(&["python", "-m", "jupyter_server"]),
            v(&["python", "-m", "jupyter", "server"]),
        ] {
            assert!(is_server(&argv), "{argv:?}");
        }
        for argv in [
            v(&["jupyter", "nbconvert", "x.ipynb"]),
            v(&["python", "-m", "jupyter", "kernelspec"]),
            v(&["bash"]),
        ] {
            assert!(!is_server(&argv), "{argv:?}");
        }
        let env = b"HOME=/home/ec2-user\0PYXTERM_DIMENSIONS=80x25\0TERM=xterm\0";
        assert_eq!(
            terminal_role(true, env, Some("pts/3".into())),
            Some(JupyterRole::Terminal {
                tty: Some("pts/3".into())
            })
        );
        assert_eq!(terminal_role(false, env, None), None);
        assert_eq!(terminal_role(true, b"XPYXTERM_DIMENSIONS=1\0", None), None);
    }
}
