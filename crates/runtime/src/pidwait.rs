//! Waiting for a process that is not our child (a shim re-parented to init) without
//! polling: pidfd_open(2) gives a descriptor that becomes readable when it exits.

use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments; a returned fd is ours to own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        // SAFETY: the kernel just returned this fd to us.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }
}

/// Resolves when process `pid` has exited (at once if it is already gone).
pub async fn exited(pid: u32) {
    // SAFETY: the OwnedFd moves into the AsyncFd and stays open, unchanged, until it drops.
    let registered = pidfd_open(pid).and_then(|fd| unsafe {
        AsyncFd::register_with_interest(fd, Interest::READABLE).map_err(std::io::Error::from)
    });
    match registered {
        Ok(afd) => {
            let _ = afd.readable().await;
        }
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
        Err(_) => {
            // kernels before 5.3: poll /proc
            while std::path::Path::new(&format!("/proc/{pid}")).exists() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
