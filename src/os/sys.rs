//! Safe wrappers over the libc calls the drivers make, each in one place.
//! A failure keeps its errno as a value ([`SysError::errno`]) and names the
//! call; callers match numbers, never text. Data-path calls count
//! themselves in [`super::syscount`]; setup calls do not.

use std::borrow::Cow;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A failed OS call: what was being done, the OS error with its errno, and
/// what the user can do about it, if we know.
#[derive(Debug, thiserror::Error)]
#[error("{doing}: {err}{hint}")]
pub struct SysError {
    pub doing: Cow<'static, str>,
    pub err: io::Error,
    pub hint: Cow<'static, str>,
}

impl SysError {
    pub fn new(doing: impl Into<Cow<'static, str>>, err: io::Error) -> SysError {
        SysError { doing: doing.into(), err, hint: Cow::Borrowed("") }
    }

    fn last(call: &'static str) -> SysError {
        SysError::new(call, io::Error::last_os_error())
    }

    /// Text after the error, such as " (this host has no IPv6 route)".
    pub fn hint(mut self, hint: impl Into<Cow<'static, str>>) -> SysError {
        self.hint = hint.into();
        self
    }

    pub fn errno(&self) -> Option<i32> {
        errno(&self.err)
    }
}

/// For `io::Result` code: the same kind, and the [`SysError`] inside, so
/// [`errno`] still finds the number.
impl From<SysError> for io::Error {
    fn from(e: SysError) -> io::Error {
        io::Error::new(e.err.kind(), e)
    }
}

/// The errno of `e`, or of the OS error a [`SysError`] inside it holds.
pub fn errno(e: &io::Error) -> Option<i32> {
    e.raw_os_error().or_else(|| e.get_ref()?.downcast_ref::<SysError>()?.errno())
}

/// Says what was being done when an I/O call failed, keeping the error.
pub trait Doing<T> {
    fn doing(self, what: impl FnOnce() -> String) -> io::Result<T>;
}

impl<T> Doing<T> for io::Result<T> {
    fn doing(self, what: impl FnOnce() -> String) -> io::Result<T> {
        self.map_err(|e| SysError::new(what(), e).into())
    }
}

fn check(r: isize, call: &'static str) -> Result<usize, SysError> {
    if r < 0 {
        return Err(SysError::last(call));
    }
    Ok(r as usize)
}

/// sendfile(2) from `file` at `*off` to `sock`; advances `*off`.
pub fn sendfile(sock: RawFd, file: RawFd, off: &mut libc::off_t, len: usize) -> Result<usize, SysError> {
    super::syscount::count(1);
    // SAFETY: `off` is a live off_t we own; the kernel moves page references
    // between the two descriptors and touches no buffer of ours.
    check(unsafe { libc::sendfile(sock, file, off, len) }, "sendfile")
}

/// splice(2) from `from` to `to`; `off` is the file offset when `from` is a
/// file (advanced), `None` for a pipe.
pub fn splice(
    from: RawFd,
    off: Option<&mut libc::loff_t>,
    to: RawFd,
    len: usize,
    call: &'static str,
) -> Result<usize, SysError> {
    let off = off.map_or(std::ptr::null_mut(), |o| o as *mut libc::loff_t);
    super::syscount::count(1);
    // SAFETY: `off` is null or a live loff_t we own; splice moves pages
    // between descriptors and touches no memory of ours.
    check(
        unsafe { libc::splice(from, off, to, std::ptr::null_mut(), len, libc::SPLICE_F_MOVE | libc::SPLICE_F_MORE) },
        call,
    )
}

/// A pipe: (read end, write end), close-on-exec.
pub fn pipe() -> Result<(OwnedFd, OwnedFd), SysError> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array we pass.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } as isize, "pipe2")?;
    // SAFETY: both descriptors were just created and are owned here only.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Asks for a pipe of `bytes` (F_SETPIPE_SZ).
pub fn set_pipe_size(pipe: &OwnedFd, bytes: usize) -> Result<(), SysError> {
    let bytes = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: fcntl on a descriptor we own, with an integer argument.
    check(unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, bytes) } as isize, "fcntl(F_SETPIPE_SZ)").map(drop)
}

/// Reserves `len` bytes of `file` from its start (fallocate, mode 0).
pub fn fallocate(file: &impl AsRawFd, len: libc::off_t) -> Result<(), SysError> {
    // SAFETY: fallocate on a descriptor we own, mode 0, in-range values.
    check(unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) } as isize, "fallocate").map(drop)
}

/// Starts writeback of `len` bytes at `off` (sync_file_range, WRITE only).
pub fn start_writeback(file: &impl AsRawFd, off: u64, len: u64) -> Result<(), SysError> {
    super::syscount::count(1);
    // SAFETY: sync_file_range on our own descriptor; it only starts
    // writeback and touches no memory of ours.
    let r = unsafe {
        libc::sync_file_range(file.as_raw_fd(), off as libc::off64_t, len as libc::off64_t, libc::SYNC_FILE_RANGE_WRITE)
    };
    check(r as isize, "sync_file_range").map(drop)
}

/// The connection's retransmitted segments so far (`TCP_INFO`).
pub fn tcp_retransmits(sock: RawFd) -> Result<u64, SysError> {
    // SAFETY: tcp_info is plain data; an all-zero value is valid.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`, which we own.
    let r = unsafe {
        libc::getsockopt(sock, libc::IPPROTO_TCP, libc::TCP_INFO, (&mut info as *mut libc::tcp_info).cast(), &mut len)
    };
    if r != 0 {
        return Err(SysError::last("getsockopt(TCP_INFO)"));
    }
    Ok(u64::from(info.tcpi_total_retrans))
}

/// `setsockopt` with a u32 value.
pub fn setsockopt_u32(fd: RawFd, level: libc::c_int, name: libc::c_int, value: u32) -> Result<(), SysError> {
    // SAFETY: passes a pointer to a live u32 and its exact size.
    let r = unsafe {
        libc::setsockopt(fd, level, name, (&value as *const u32).cast(), std::mem::size_of::<u32>() as libc::socklen_t)
    };
    if r == 0 {
        Ok(())
    } else {
        Err(SysError::last("setsockopt"))
    }
}

/// Waits until one of `fds` is readable or `timeout` passes.
pub fn wait_readable(fds: &[std::os::fd::RawFd], timeout: std::time::Duration) {
    let mut pfds: Vec<libc::pollfd> =
        fds.iter().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
    // ppoll, not poll: poll counts in milliseconds, and a pacer's or a
    // timer's wait is often shorter; rounded down to 0 it returned at once,
    // and a paced sender spun a core instead of sleeping.
    let timeout = timeout.min(std::time::Duration::from_secs(1));
    let ts = libc::timespec { tv_sec: timeout.as_secs() as libc::time_t, tv_nsec: timeout.subsec_nanos().into() };
    super::syscount::count(1);
    // SAFETY: `pfds` is a live array of `pfds.len()` pollfd structs, `ts` a
    // live timespec; no signal mask is passed.
    unsafe { libc::ppoll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, &ts, std::ptr::null()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_errno_survives_the_words_added_to_it() {
        let e: io::Result<()> = Err(io::Error::from_raw_os_error(libc::EADDRINUSE));
        let e = e.doing(|| "binding 10.0.0.1:9000".into()).expect_err("an error");
        assert_eq!(errno(&e), Some(libc::EADDRINUSE));
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        assert!(e.to_string().starts_with("binding 10.0.0.1:9000: "), "{e}");
        let hinted = SysError::new("connect", io::Error::from_raw_os_error(libc::ENETUNREACH)).hint(" (no route)");
        assert_eq!(hinted.errno(), Some(libc::ENETUNREACH));
        assert!(hinted.to_string().ends_with(" (no route)"), "{hinted}");
    }

    #[test]
    fn a_failed_call_names_itself_and_keeps_its_errno() {
        let e = setsockopt_u32(-1, libc::SOL_SOCKET, libc::SO_RCVBUF, 1).expect_err("fd -1");
        assert_eq!(e.errno(), Some(libc::EBADF));
        assert!(e.to_string().starts_with("setsockopt"), "{e}");
    }
}
