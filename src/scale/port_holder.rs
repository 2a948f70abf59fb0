//! Who listens on a backend's port. A backend process is told a port that was free when rouse
//! picked it, and binds it some time later (after its boot). Anything else on the machine that
//! binds that port in between (another program's port-0 pick, another rouse's backend) would
//! answer the readiness probe in the backend's place, and requests would go to it. So a probe
//! that passes counts only when the listening socket is held by the backend's own process
//! group; and a backend that exits before it is ready because its port was taken is started
//! again on another port, not reported as failed.
//!
//! Linux only. The kernel's socket diagnostics (netlink `sock_diag`) give the inode of the
//! socket listening on the port, and the processes' open files (`/proc/PID/fd`) who holds it.
//! Wherever that cannot be told (no netlink, no listening socket found), the probe's word is
//! taken as before.

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
    match listening(port) {
        Some(inodes) if !inodes.is_empty() => held(Path::new("/proc"), &inodes, group),
        _ => Holder::Unknown,
    }
}

/// Who holds one of the sockets `inodes`, read from the process files under `proc`.
fn held(proc: &Path, inodes: &[u64], group: u32) -> Holder {
    // The process rouse started holds it itself, the usual case: one directory to read.
    if holds(proc, group, inodes) {
        return Holder::Group;
    }
    let mut foreign = None;
    for pid in pids(proc) {
        if pid == group {
            continue;
        }
        if pgrp(proc, pid) == Some(group) {
            if holds(proc, pid, inodes) {
                return Holder::Group;
            }
        } else if foreign.is_none() && holds(proc, pid, inodes) {
            foreign = Some((pid, name(proc, pid)));
        }
    }
    // Every process of the group is the same user's as rouse, so their files were all read:
    // a socket that none of them holds is someone else's.
    Holder::Foreign(foreign)
}

/// The inodes of the TCP sockets (IPv4 and IPv6) listening on `port`, asked of the kernel's
/// socket diagnostics with a filter for listening sockets on that port: the kernel walks only
/// its table of listening sockets. (`/proc/net/tcp*` would do, but the kernel writes those
/// from its whole connection table, a walk of milliseconds on a machine with much memory,
/// however few connections there are, and this runs on every cold start.) `None` when the
/// kernel cannot be asked.
fn listening(port: u16) -> Option<Vec<u64>> {
    use nix::sys::socket::{
        AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, recv, send, socket,
    };
    use std::os::fd::AsRawFd;
    // linux/netlink.h, linux/sock_diag.h, linux/inet_diag.h.
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLM_F_REQUEST_DUMP: u16 = 0x01 | 0x300;
    const TCP_LISTEN: u8 = 10;
    const AF_INET: u8 = 2;
    const AF_INET6: u8 = 10;
    const IPPROTO_TCP: u8 = 6;
    const HEADER: usize = 16;
    // struct inet_diag_msg: family, state, timer, retrans, then the socket id (sport at 4),
    // expires, rqueue, wqueue, uid, inode (at 68).
    const MSG_LEN: usize = 72;
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )
    .ok()?;
    let fd = fd.as_raw_fd();
    let mut inodes = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    for family in [AF_INET, AF_INET6] {
        // struct nlmsghdr, then struct inet_diag_req_v2: family, protocol (TCP), no
        // extensions, padding, the states wanted (listening only), the socket id with the
        // source port (big-endian) and the rest zero.
        const REQ_LEN: usize = HEADER + 56;
        let mut req = [0u8; REQ_LEN];
        req[0..4].copy_from_slice(&(REQ_LEN as u32).to_ne_bytes());
        req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        req[6..8].copy_from_slice(&NLM_F_REQUEST_DUMP.to_ne_bytes());
        req[8..12].copy_from_slice(&u32::from(family).to_ne_bytes());
        req[16] = family;
        req[17] = IPPROTO_TCP;
        req[20..24].copy_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
        req[24..26].copy_from_slice(&port.to_be_bytes());
        send(fd, &req, MsgFlags::empty()).ok()?;
        'replies: loop {
            let n = recv(fd, &mut buf, MsgFlags::empty()).ok()?;
            if n == 0 {
                break;
            }
            let mut at = 0;
            while at + HEADER <= n {
                let len = u32::from_ne_bytes(buf[at..at + 4].try_into().ok()?) as usize;
                let kind = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().ok()?);
                if len < HEADER || at + len > n {
                    return None;
                }
                match kind {
                    NLMSG_DONE => break 'replies,
                    NLMSG_ERROR => return None,
                    SOCK_DIAG_BY_FAMILY if len >= HEADER + MSG_LEN => {
                        let m = &buf[at + HEADER..at + len];
                        let sport = u16::from_be_bytes([m[4], m[5]]);
                        let inode = u32::from_ne_bytes(m[68..72].try_into().ok()?);
                        // The kernel filters too; checked again all the same.
                        if m[1] == TCP_LISTEN && sport == port && inode != 0 {
                            inodes.push(u64::from(inode));
                        }
                    }
                    _ => {}
                }
                // Messages are aligned to four bytes.
                at += (len + 3) & !3;
            }
        }
    }
    Some(inodes)
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
    fn an_ipv6_listener_is_found_too() {
        let Ok(l) = TcpListener::bind("[::1]:0") else {
            // No IPv6 on this machine's loopback: nothing to find.
            return;
        };
        let port = l.local_addr().unwrap().port();
        assert_eq!(holder(port, me()), Holder::Group);
    }

    #[test]
    fn the_holder_is_found_among_the_groups_processes_and_named_outside_it() {
        let dir = std::env::temp_dir().join(format!("rouse-holder-{}", me()));
        let _ = std::fs::remove_dir_all(&dir);
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
        // Socket 11 is held by a worker of group 100, found through its pgrp (its name has a
        // space and parentheses, which the stat line is read past).
        assert_eq!(held(&dir, &[11], 100), Holder::Group);
        assert_eq!(
            held(&dir, &[11], 200),
            Holder::Foreign(Some((101, "a (b) c".to_owned())))
        );
        // Nobody here holds socket 13: someone rouse cannot see.
        assert_eq!(held(&dir, &[13], 100), Holder::Foreign(None));
        assert_eq!(pgrp(&dir, 101), Some(100));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
