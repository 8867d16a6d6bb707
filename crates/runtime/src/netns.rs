//! Sockets inside another process's network namespace. A thread enters the namespace
//! with setns(2), makes the socket there and leaves; the socket stays bound to that
//! namespace, so the rest of the process uses it as any other. This is how published
//! ports and health probes reach a container without routing anything on the host.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sched::{setns, CloneFlags};

pub fn ns_path(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/ns/net"))
}

/// Runs `f` on a fresh thread that has joined the network namespace at `ns`.
pub fn in_netns<T: Send + 'static>(ns: &Path, f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    let file = File::open(ns)?;
    std::thread::spawn(move || {
        setns(file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        f()
    })
    .join()
    .map_err(|_| io::Error::other("netns thread panicked"))?
}

/// Connects to `127.0.0.1:port` inside the namespace at `ns`.
pub fn connect_tcp(ns: &Path, port: u16, timeout: Duration) -> io::Result<TcpStream> {
    in_netns(ns, move || TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)), timeout))
}

/// Brings the loopback interface up inside the namespace at `ns` (runc leaves it down).
pub fn loopback_up(ns: &Path) -> io::Result<()> {
    in_netns(ns, || {
        let sock = nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Inet,
            nix::sys::socket::SockType::Datagram,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(io::Error::from)?;
        // SAFETY: ifreq is plain data; we pass a valid, zeroed struct with a NUL-terminated name.
        unsafe {
            use std::os::fd::AsRawFd;
            let mut req: libc::ifreq = std::mem::zeroed();
            for (i, b) in b"lo\0".iter().enumerate() {
                req.ifr_name[i] = *b as libc::c_char;
            }
            if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
                return Err(io::Error::last_os_error());
            }
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    })
}
