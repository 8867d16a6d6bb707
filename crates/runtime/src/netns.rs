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

/// A UDP socket made inside the namespace at `ns`, connected to `127.0.0.1:port` there.
pub fn udp_to(ns: &Path, port: u16) -> io::Result<std::net::UdpSocket> {
    in_netns(ns, move || {
        let s = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        s.connect((Ipv4Addr::LOCALHOST, port))?;
        Ok(s)
    })
}

/// Brings the loopback interface up in the calling thread's network namespace.
fn loopback_up_here() -> io::Result<()> {
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
}

/// Creates a new network namespace with its loopback up and pins it at `path` (a bind
/// mount, like `ip netns add`), so a container can join it by path and it outlives no
/// one: [`remove`] undoes it.
pub fn create(path: &Path) -> io::Result<()> {
    std::fs::File::create(path)?;
    let target = path.to_path_buf();
    let made = std::thread::spawn(move || -> io::Result<()> {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        loopback_up_here()?;
        let tid = nix::unistd::gettid();
        nix::mount::mount(
            Some(format!("/proc/self/task/{tid}/ns/net").as_str()),
            &target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(io::Error::from)
    })
    .join()
    .map_err(|_| io::Error::other("netns thread panicked"))?;
    if made.is_err() {
        let _ = std::fs::remove_file(path);
    }
    made
}

/// Unpins a namespace made by [`create`]; it goes away with its last process.
pub fn remove(path: &Path) {
    let _ = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH);
    let _ = std::fs::remove_file(path);
}
