//! Who listens on a backend's port. A backend process is told a port that was free when rouse
//! picked it, and binds it some time later (after its boot). Anything else on the machine that
//! binds that port in between (another program's port-0 pick, another rouse's backend) would
//! answer the readiness probe in the backend's place, and requests would go to it. So a probe
//! that passes counts only when the listening socket is held by the backend's own process
//! group; and a backend that exits before it is ready because its port was taken is started
//! again on another port, not reported as failed.
//!
//! Linux only, read from `/proc`: the listening sockets of the network namespace
//! (`/proc/net/tcp`, `/proc/net/tcp6`) give the socket's inode, and the processes' open files
//! (`/proc/PID/fd`) who holds it. Wherever that cannot be told (no `/proc`, no listening
//! socket listed), the probe's word is taken as before.

use std::path::Path;

/// Who holds the listening socket of a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// A process of the backend's own process group.
    Group,
    /// Something outside it: the process, when it could be found (`pid`, its name).
    Foreign(Option<(u32, String)>),
    /// It cannot be told.
    Unknown,
}

impl Holder {
    /// Says who it is, for a log line or an error.
    pub fn describe(&self) -> String {
        match self {
            Holder::Foreign(Some((pid, name))) => format!("process {pid} ({name})"),
            Holder::Foreign(None) => "a process rouse cannot see".to_owned(),
            Holder::Group => "the backend".to_owned(),
            Holder::Unknown => "an unknown process".to_owned(),
        }
    }
}

/// Who holds the socket listening on `port`, when the backend's process group is `group` (the
/// pid of the process rouse started, which leads its group).
pub fn holder(port: u16, group: u32) -> Holder {
    holder_in(Path::new("/proc"), port, group)
}

fn holder_in(proc: &Path, port: u16, group: u32) -> Holder {
    let mut inodes = Vec::new();
    for table in ["net/tcp", "net/tcp6"] {
        listening(&proc.join(table), port, &mut inodes);
    }
    if inodes.is_empty() {
        return Holder::Unknown;
    }
    // The process rouse started holds it itself, the usual case: one directory to read.
    if holds(proc, group, &inodes) {
        return Holder::Group;
    }
    let mut foreign = None;
    for pid in pids(proc) {
        if pid == group {
            continue;
        }
        if pgrp(proc, pid) == Some(group) {
            if holds(proc, pid, &inodes) {
                return Holder::Group;
            }
        } else if foreign.is_none() && holds(proc, pid, &inodes) {
            foreign = Some((pid, name(proc, pid)));
        }
    }
    // Every process of the group is the same user's as rouse, so their files were all read:
    // a socket that none of them holds is someone else's.
    Holder::Foreign(foreign)
}

/// Adds the inodes of the sockets listening on `port` in the table at `path`. The kernel lists
/// listening sockets before connected ones, so reading stops at the first line that is not
/// one: a host with many connections does not have them all formatted for this.
fn listening(path: &Path, port: u16, inodes: &mut Vec<u64>) {
    use std::io::BufRead;
    let Ok(file) = std::fs::File::open(path) else {
        return;
    };
    for line in std::io::BufReader::new(file).lines().skip(1) {
        let Ok(line) = line else { return };
        // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 10 {
            return;
        }
        if fields[3] != "0A" {
            return;
        }
        let local_port = fields[1]
            .rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
        if local_port == Some(port)
            && let Ok(inode) = fields[9].parse::<u64>()
            && inode != 0
        {
            inodes.push(inode);
        }
    }
}

/// Whether process `pid` has one of `inodes` open.
fn holds(proc: &Path, pid: u32, inodes: &[u64]) -> bool {
    let Ok(fds) = std::fs::read_dir(proc.join(pid.to_string()).join("fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| {
            target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok())
                .is_some_and(|i| inodes.contains(&i))
        })
    })
}

fn pids(proc: &Path) -> impl Iterator<Item = u32> {
    std::fs::read_dir(proc)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
}

/// The process group of `pid`: the fifth field of its `stat`, counted after the name, which
/// is in parentheses and may hold spaces and parentheses itself.
fn pgrp(proc: &Path, pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(proc.join(pid.to_string()).join("stat")).ok()?;
    let (_, after) = stat.rsplit_once(')')?;
    after.split_whitespace().nth(2)?.parse().ok()
}

fn name(proc: &Path, pid: u32) -> String {
    std::fs::read_to_string(proc.join(pid.to_string()).join("comm"))
        .map(|s| s.trim_end().to_owned())
        .unwrap_or_else(|_| "?".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn me() -> u32 {
        std::process::id()
    }

    #[test]
    fn a_listener_of_this_process_is_the_groups_when_this_process_leads_it() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        // The test process stands for the backend: asked as its own group's leader, it holds
        // the port; asked for a group it is not in, the holder is foreign and named.
        assert_eq!(holder(port, me()), Holder::Group);
        match holder(port, u32::MAX) {
            Holder::Foreign(Some((pid, _))) => assert_eq!(pid, me()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_port_nobody_listens_on_is_unknown_and_a_bound_socket_is_no_listener() {
        // Bound but not listening: not in the listening table.
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let bound = s.local_addr().unwrap();
        assert_eq!(holder(bound.port(), me()), Holder::Unknown);
    }

    #[test]
    fn tables_are_read_up_to_the_first_connected_socket_and_names_may_hold_parens() {
        let dir = std::env::temp_dir().join(format!("rouse-holder-{}", me()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("net")).unwrap();
        let head = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";
        let row = |port: u16, st: &str, inode: u64| {
            format!(
                "   0: 0100007F:{port:04X} 00000000:0000 {st} 00000000:00000000 00:00000000 00000000  1000        0 {inode} 1 0000000000000000 100 0 0 10 0\n"
            )
        };
        // Port 8080 listens with inode 11; a connected socket on it (inode 12) comes after a
        // connected line, so it is never read.
        let tcp = format!(
            "{head}{}{}{}",
            row(8080, "0A", 11),
            row(9000, "01", 13),
            row(8080, "0A", 12)
        );
        std::fs::write(dir.join("net/tcp"), tcp).unwrap();
        let proc_of = |pid: u32, pgrp: u32, name: &str, inode: Option<u64>| {
            let p = dir.join(pid.to_string());
            std::fs::create_dir_all(p.join("fd")).unwrap();
            std::fs::write(
                p.join("stat"),
                format!("{pid} ({name}) S 1 {pgrp} {pgrp} 0 -1\n"),
            )
            .unwrap();
            std::fs::write(p.join("comm"), format!("{name}\n")).unwrap();
            if let Some(i) = inode {
                std::os::unix::fs::symlink(format!("socket:[{i}]"), p.join("fd/3")).unwrap();
            }
        };
        proc_of(100, 100, "sh", None);
        proc_of(101, 100, "a (b) c", Some(11));
        proc_of(200, 200, "other", Some(12));
        // The socket is held by a worker of group 100, found through its pgrp.
        assert_eq!(holder_in(&dir, 8080, 100), Holder::Group);
        assert_eq!(
            holder_in(&dir, 8080, 200),
            Holder::Foreign(Some((101, "a (b) c".to_owned())))
        );
        assert_eq!(holder_in(&dir, 9000, 100), Holder::Unknown);
        assert_eq!(pgrp(&dir, 101), Some(100));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
