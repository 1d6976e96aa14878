//! The supervisor: the router's first process. It forks the workers and the admin child,
//! waits for them to report ready, respawns those that die, and turns signals into phases.
//!
//! Role: the only process systemd knows (`NotifyAccess=main`): it alone sends `READY=1`,
//! `RELOADING=1`, `STOPPING=1` and `STATUS=`. It must stay free of tokio, threads, a metrics
//! recorder and AMQP at every fork (tech-notes §3), so it is plain blocking code: signals are
//! blocked before the first fork and read synchronously from a signalfd (the file-descriptor
//! form of `sigwait`: no handler ever runs), and one `poll(2)` waits on that signalfd, on the
//! children's readiness pipes and on the next deadline (a respawn or the shutdown grace).
//!
//! Before forking it reserves the router's port: a SO_REUSEPORT socket bound to
//! `[router] listen` but never listening, so port 0 is resolved once and every worker (and
//! every respawned worker) binds the same port, and nobody else can take the port while a
//! worker restarts. A socket that does not listen is not in the reuseport group, so it never
//! receives a connection.
//!
//! Phases: starting (until every child has reported ready once, then the `ready ...` line and
//! `READY=1`), running, draining (SIGTERM: workers drain, SIGKILL after
//! `shutdown_grace_secs`), stopping (SIGINT: everything stops now).
//!
//! Invariants: a slot has a pid xor a pending respawn (or neither, once stopping); `ready`
//! implies a pid; the ready line is printed once.

pub mod backoff;

use std::ffi::CString;
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork, getpid, getppid, pipe2};
use sd_notify::NotifyState;
use socket2::{Domain, Protocol, Socket, Type};

use super::admin::{self, AdminArgs};
use super::{RouterError, rlimit, worker};
use crate::config::Config;
use crate::metrics as m;
use backoff::Backoff;

/// How long SIGINT ("stop now") waits for children before SIGKILL.
const FAST_STOP: Duration = Duration::from_secs(2);
/// Deaths before the first ready after which start-up is given up (exit 1).
const STARTUP_ATTEMPTS: u32 = 3;

/// What a child slot runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Worker(usize),
    Admin,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Worker(i) => write!(f, "worker-{i}"),
            Role::Admin => f.write_str("admin"),
        }
    }
}

/// One child the supervisor keeps running.
struct Slot {
    role: Role,
    /// The running child.
    pid: Option<Pid>,
    /// Read end of the child's readiness pipe, until it reports ready or closes it.
    ready_pipe: Option<File>,
    /// What the child wrote on the pipe so far (`ready\n` when ready).
    ready_buf: Vec<u8>,
    /// The child reported ready and has not died since.
    ready: bool,
    /// When the current (or last) child was forked.
    started: Instant,
    backoff: Backoff,
    /// When the dead child is due to be forked again.
    respawn_at: Option<Instant>,
    /// Respawns so far (the first start is not one).
    restarts: u64,
}

/// Where the supervisor is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Until every child has reported ready once.
    Starting,
    Running,
    /// SIGTERM: workers drain; SIGKILL for the rest at `deadline`.
    Draining {
        deadline: Instant,
        killed: bool,
    },
    /// SIGINT: everything was told to stop now; SIGKILL at `deadline`.
    Stopping {
        deadline: Instant,
        killed: bool,
    },
}

struct Supervisor {
    /// The configuration workers are forked with (replaced by a good SIGHUP reload).
    cfg: Config,
    config_path: Option<PathBuf>,
    pid: Pid,
    /// The router's address, port resolved.
    listen: SocketAddr,
    admin_addr: SocketAddr,
    /// Workers 0..n, then the admin child.
    slots: Vec<Slot>,
    signals: SignalFd,
    /// Holds the router's port (see the module doc); never listens.
    reservation: Socket,
    /// The admin endpoint's socket, listening; only the admin child accepts on it.
    admin_listener: TcpListener,
    phase: Phase,
    /// CPUs this process may run on (worker i is pinned to the i-th, modulo).
    cpus: Vec<usize>,
    /// The supervisor figures as last written, and the STATUS= last sent.
    last_state: String,
    last_status: String,
}

fn os(what: &'static str) -> impl FnOnce(nix::Error) -> RouterError {
    move |source| RouterError::Os { what, source }
}

/// The signals the supervisor handles; blocked for its whole life.
fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(s);
    }
    set
}

/// Binds `addr` with SO_REUSEPORT without listening: reserves the port for the workers.
///
/// A fixed port is first probed with a plain bind: SO_REUSEPORT would otherwise let this
/// router's workers silently join the listeners of another router (same user) already on
/// the port and share its traffic.
fn reserve_port(addr: SocketAddr) -> io::Result<Socket> {
    if addr.port() != 0 {
        let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        probe.set_reuse_address(true)?;
        probe
            .bind(&addr.into())
            .map_err(|e| io::Error::new(e.kind(), format!("{e} (is another router or program listening there?)")))?;
    }
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&addr.into())?;
    Ok(s)
}

/// Runs the supervisor until the router stops (see [`crate::router::run`]).
pub fn run(mut cfg: Config, config_path: Option<PathBuf>) -> Result<(), RouterError> {
    let workers = cfg.worker_count();
    match rlimit::raise_nofile() {
        Ok(l) => tracing::info!(soft_before = l.soft_before, soft = l.soft, hard = l.hard, "RLIMIT_NOFILE"),
        Err(e) => tracing::warn!(error = %e, "cannot raise RLIMIT_NOFILE"),
    }
    let dir = admin::metrics_dir(&cfg.router.runtime_dir);
    let dir_err = |source| RouterError::RuntimeDir { path: dir.clone(), source };
    std::fs::create_dir_all(&dir).map_err(dir_err)?;
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).map_err(dir_err)?;

    let configured = cfg.router.listen;
    let bind_err = |what, addr| move |source| RouterError::Bind { what, addr, source };
    let reservation = reserve_port(configured).map_err(bind_err("router", configured))?;
    let listen = reservation.local_addr().ok().and_then(|a| a.as_socket()).ok_or_else(|| RouterError::Bind {
        what: "router",
        addr: configured,
        source: io::Error::other("no address"),
    })?;
    cfg.router.listen = listen;
    let admin_listener = TcpListener::bind(cfg.admin.listen).map_err(bind_err("admin", cfg.admin.listen))?;
    let admin_addr = admin_listener.local_addr().map_err(bind_err("admin", cfg.admin.listen))?;

    // Block before the first fork: children inherit the mask and reset it themselves.
    let mask = handled_signals();
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None).map_err(os("sigprocmask"))?;
    let signals =
        SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC).map_err(os("signalfd"))?;
    let cpus = match sched_getaffinity(Pid::from_raw(0)) {
        Ok(set) => (0..CpuSet::count()).filter(|&c| set.is_set(c).unwrap_or(false)).collect(),
        Err(_) => vec![],
    };
    let now = Instant::now();
    let slot = |role| Slot {
        role,
        pid: None,
        ready_pipe: None,
        ready_buf: vec![],
        ready: false,
        started: now,
        backoff: Backoff::new(),
        respawn_at: None,
        restarts: 0,
    };
    let mut slots: Vec<Slot> = (0..workers).map(|i| slot(Role::Worker(i))).collect();
    slots.push(slot(Role::Admin));
    let mut sup = Supervisor {
        cfg,
        config_path,
        pid: getpid(),
        listen,
        admin_addr,
        slots,
        signals,
        reservation,
        admin_listener,
        phase: Phase::Starting,
        cpus,
        last_state: String::new(),
        last_status: String::new(),
    };
    tracing::info!(router = %listen, admin = %admin_addr, workers, "supervisor starting");
    sup.publish();
    let result = (0..sup.slots.len()).try_for_each(|i| sup.spawn(i)).and_then(|()| sup.event_loop());
    if result.is_err() {
        sup.abort_children();
    }
    result
}

impl Supervisor {
    fn workers(&self) -> usize {
        self.slots.len() - 1
    }

    fn live(&self) -> impl Iterator<Item = (Role, Pid)> + '_ {
        self.slots.iter().filter_map(|s| s.pid.map(|p| (s.role, p)))
    }

    fn stopping(&self) -> bool {
        matches!(self.phase, Phase::Draining { .. } | Phase::Stopping { .. })
    }

    /// Forks the child of slot `i`.
    fn spawn(&mut self, i: usize) -> Result<(), RouterError> {
        let (read, write) = pipe2(OFlag::O_CLOEXEC).map_err(os("pipe2"))?;
        fcntl(&read, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).map_err(os("fcntl"))?;
        // Buffered output would be written twice, once by each process.
        let _ = io::stdout().flush();
        let _ = io::stderr().flush();
        // SAFETY: the supervisor is single-threaded at every fork (no runtime, no thread, no
        // recorder: see the module doc), so no lock can be held by a thread that does not
        // exist in the child, and the child may run any code, allocation included.
        match unsafe { fork() }.map_err(os("fork"))? {
            ForkResult::Child => {
                drop(read);
                let code = self.child_main(i, write);
                let _ = io::stdout().flush();
                std::process::exit(code);
            }
            ForkResult::Parent { child } => {
                drop(write);
                let s = &mut self.slots[i];
                s.pid = Some(child);
                s.ready_pipe = Some(File::from(read));
                s.ready_buf.clear();
                s.ready = false;
                s.started = Instant::now();
                s.respawn_at = None;
                tracing::info!(child = %s.role, pid = child.as_raw(), restarts = s.restarts, "child started");
                Ok(())
            }
        }
    }

    /// In the child, right after the fork: undo what the supervisor set up for itself, then
    /// become a worker or the admin process. Returns the exit code.
    fn child_main(&mut self, i: usize, ready: OwnedFd) -> i32 {
        // The mask is inherited: unblock, or the child's own signal handling never runs.
        if let Err(e) = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None) {
            eprintln!("switchboard: child cannot reset its signal mask: {e}");
            return 70;
        }
        // Die with the supervisor. PDEATHSIG follows the thread that forked (the supervisor's
        // only thread); the getppid check closes the race with a supervisor that died first.
        if nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).is_err() || getppid() != self.pid {
            return 1;
        }
        let role = self.slots[i].role;
        if let Ok(name) = CString::new(match role {
            Role::Worker(w) => format!("sb-worker-{w}"),
            Role::Admin => "sb-admin".to_owned(),
        }) {
            let _ = nix::sys::prctl::set_name(&name);
        }
        // Close the supervisor's descriptors by number. Their owners are never dropped in
        // this process: it leaves through process::exit, which runs no destructor.
        let mut close = vec![self.signals.as_raw_fd(), self.reservation.as_raw_fd()];
        close.extend(self.slots.iter().filter_map(|s| s.ready_pipe.as_ref().map(|p| p.as_raw_fd())));
        match role {
            Role::Worker(w) => {
                close.push(self.admin_listener.as_raw_fd());
                for fd in close {
                    let _ = nix::unistd::close(fd);
                }
                if self.cfg.router.pin_cpus && !self.cpus.is_empty() {
                    let mut set = CpuSet::new();
                    let cpu = self.cpus[w % self.cpus.len()];
                    if set.set(cpu).is_ok() && sched_setaffinity(Pid::from_raw(0), &set).is_err() {
                        eprintln!("switchboard: worker {w} cannot pin itself to CPU {cpu}");
                    }
                }
                worker::process_main(self.cfg.clone(), self.config_path.clone(), w, Some(ready))
            }
            Role::Admin => {
                let listener = match self.admin_listener.try_clone() {
                    Ok(l) => l,
                    Err(e) => {
                        eprintln!("switchboard: admin cannot take its listener: {e}");
                        return 1;
                    }
                };
                close.push(self.admin_listener.as_raw_fd());
                for fd in close {
                    let _ = nix::unistd::close(fd);
                }
                let args = AdminArgs {
                    listener,
                    runtime_dir: self.cfg.router.runtime_dir.clone(),
                    workers: self.workers(),
                    supervisor: self.pid,
                };
                admin::process_main(args, Some(ready))
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let phase = match self.phase {
            Phase::Draining { deadline, killed: false } | Phase::Stopping { deadline, killed: false } => Some(deadline),
            _ => None,
        };
        self.slots.iter().filter_map(|s| s.respawn_at).chain(phase).min()
    }

    fn event_loop(&mut self) -> Result<(), RouterError> {
        loop {
            if self.stopping() && self.live().next().is_none() {
                tracing::info!("supervisor exiting: every child has exited");
                return Ok(());
            }
            let timeout = match self.next_deadline() {
                None => PollTimeout::NONE,
                Some(d) => {
                    let ms = d.saturating_duration_since(Instant::now()).as_nanos().div_ceil(1_000_000);
                    PollTimeout::try_from(ms.min(60_000) as u32).unwrap_or(PollTimeout::MAX)
                }
            };
            let (signalled, readable) = {
                let mut fds = vec![PollFd::new(self.signals.as_fd(), PollFlags::POLLIN)];
                let mut which = vec![];
                for (i, s) in self.slots.iter().enumerate() {
                    if let Some(p) = &s.ready_pipe {
                        fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
                        which.push(i);
                    }
                }
                match poll(&mut fds, timeout) {
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(e) => return Err(RouterError::Os { what: "poll", source: e }),
                }
                let hit = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
                let readable: Vec<usize> =
                    which.iter().zip(&fds[1..]).filter(|(_, f)| hit(f)).map(|(i, _)| *i).collect();
                (hit(&fds[0]), readable)
            };
            if signalled {
                while let Some(info) = self.signals.read_signal().map_err(os("signalfd read"))? {
                    match Signal::try_from(info.ssi_signo as i32) {
                        Ok(sig) => self.on_signal(sig)?,
                        Err(_) => tracing::warn!(signo = info.ssi_signo, "unexpected signal"),
                    }
                }
            }
            for i in readable {
                self.read_ready(i);
            }
            self.on_timers(Instant::now());
            self.publish();
        }
    }

    fn on_signal(&mut self, sig: Signal) -> Result<(), RouterError> {
        match sig {
            Signal::SIGCHLD => self.reap(),
            Signal::SIGTERM => {
                if self.stopping() {
                    tracing::info!("SIGTERM again: already stopping");
                    return Ok(());
                }
                let grace = Duration::from_secs(self.cfg.router.shutdown_grace_secs);
                tracing::info!(grace_secs = grace.as_secs(), "SIGTERM: draining the workers");
                notify(&[NotifyState::Stopping, NotifyState::Status("draining")]);
                self.phase = Phase::Draining { deadline: Instant::now() + grace, killed: false };
                self.cancel_respawns();
                self.signal_workers(Signal::SIGTERM, false);
                self.progress_shutdown();
                Ok(())
            }
            Signal::SIGINT => {
                if matches!(self.phase, Phase::Stopping { .. }) {
                    return Ok(());
                }
                tracing::info!("SIGINT: stopping now");
                notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
                self.phase = Phase::Stopping { deadline: Instant::now() + FAST_STOP, killed: false };
                self.cancel_respawns();
                let pids: Vec<_> = self.live().collect();
                for (role, pid) in pids {
                    send(role, pid, Signal::SIGINT);
                }
                Ok(())
            }
            Signal::SIGHUP => {
                self.reload();
                Ok(())
            }
            other => {
                tracing::warn!(signal = %other, "unexpected signal");
                Ok(())
            }
        }
    }

    /// SIGHUP: check the config file again; if it is good, keep it for future forks and
    /// tell every worker to reload (keys and limits, connections kept).
    fn reload(&mut self) {
        if self.stopping() {
            return;
        }
        if let Ok(usec) = NotifyState::monotonic_usec_now() {
            notify(&[NotifyState::Reloading, usec]);
        }
        let outcome = match &self.config_path {
            None => Ok(None),
            Some(p) => Config::load(p).and_then(|c| c.check().map(|_| Some(c))).map_err(|e| e.to_string()),
        };
        match outcome {
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: the config file is not usable; keeping the running configuration");
            }
            Ok(new) => {
                if let Some(mut new) = new {
                    let old = &self.cfg;
                    if new.router.runtime_dir != old.router.runtime_dir
                        || new.admin.listen != old.admin.listen
                        || (new.router.listen != old.router.listen && new.router.listen.port() != 0)
                    {
                        tracing::warn!("SIGHUP: listen addresses and runtime_dir change only at restart");
                    }
                    new.router.listen = self.listen;
                    new.router.runtime_dir = old.router.runtime_dir.clone();
                    new.router.workers = old.router.workers;
                    self.cfg = new;
                }
                tracing::info!("SIGHUP: config checked; telling the workers to reload");
                self.signal_workers(Signal::SIGHUP, true);
            }
        }
        let status = self.status();
        notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
    }

    /// Sends `sig` to every live worker (only to those that reported ready, when
    /// `ready_only`: one still starting may not handle it yet, and it reads the new
    /// configuration when it starts anyway).
    fn signal_workers(&self, sig: Signal, ready_only: bool) {
        for s in &self.slots {
            if let (Role::Worker(_), Some(pid)) = (s.role, s.pid)
                && (s.ready || !ready_only)
            {
                send(s.role, pid, sig);
            }
        }
    }

    fn cancel_respawns(&mut self) {
        for s in &mut self.slots {
            s.respawn_at = None;
        }
    }

    /// Reaps every exited child (several SIGCHLDs can merge into one) and schedules respawns.
    fn reap(&mut self) -> Result<(), RouterError> {
        loop {
            let (pid, status) = match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, format!("code:{code}")),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, format!("signal:{sig}")),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(RouterError::Os { what: "waitpid", source: e }),
            };
            let Some(i) = self.slots.iter().position(|s| s.pid == Some(pid)) else { continue };
            let now = Instant::now();
            let stopping = self.stopping();
            let starting = self.phase == Phase::Starting;
            let s = &mut self.slots[i];
            s.pid = None;
            s.ready = false;
            s.ready_pipe = None;
            if stopping {
                tracing::info!(child = %s.role, pid = pid.as_raw(), exit = %status, "child exited");
                continue;
            }
            let delay = s.backoff.on_exit(s.started, now);
            tracing::warn!(
                child = %s.role,
                pid = pid.as_raw(),
                exit = %status,
                uptime_ms = now.duration_since(s.started).as_millis() as u64,
                respawn_in_ms = delay.as_millis() as u64,
                "child exited; respawning"
            );
            if starting && s.backoff.failures() >= STARTUP_ATTEMPTS {
                return Err(RouterError::StartupFailed {
                    role: s.role.to_string(),
                    attempts: s.backoff.failures(),
                    status,
                });
            }
            s.respawn_at = Some(now + delay);
        }
        self.progress_shutdown();
        Ok(())
    }

    /// While draining: once every worker is gone, stop the admin child too.
    fn progress_shutdown(&mut self) {
        if let Phase::Draining { .. } = self.phase {
            let workers_left = self.slots.iter().any(|s| matches!(s.role, Role::Worker(_)) && s.pid.is_some());
            if !workers_left && let Some(pid) = self.slots.iter().find(|s| s.role == Role::Admin).and_then(|s| s.pid) {
                send(Role::Admin, pid, Signal::SIGTERM);
            }
        }
    }

    /// Reads a readiness pipe: `ready\n` marks the child ready; EOF means it died or gave up
    /// (its SIGCHLD tells the rest).
    fn read_ready(&mut self, i: usize) {
        let s = &mut self.slots[i];
        let Some(pipe) = s.ready_pipe.as_mut() else { return };
        let mut buf = [0u8; 64];
        match pipe.read(&mut buf) {
            Ok(0) => s.ready_pipe = None,
            Ok(n) => {
                s.ready_buf.extend_from_slice(&buf[..n]);
                if s.ready_buf.starts_with(b"ready") {
                    s.ready = true;
                    s.ready_pipe = None;
                    tracing::info!(child = %s.role, pid = s.pid.map_or(0, Pid::as_raw), "child ready");
                } else if s.ready_buf.len() > 64 {
                    s.ready_pipe = None;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => s.ready_pipe = None,
        }
    }

    fn on_timers(&mut self, now: Instant) {
        match self.phase {
            Phase::Draining { deadline, killed: false } | Phase::Stopping { deadline, killed: false }
                if now >= deadline =>
            {
                let left: Vec<_> = self.live().collect();
                tracing::warn!(children = left.len(), "grace period over: SIGKILL");
                for (role, pid) in left {
                    send(role, pid, Signal::SIGKILL);
                }
                self.phase = match self.phase {
                    Phase::Draining { deadline, .. } => Phase::Draining { deadline, killed: true },
                    _ => Phase::Stopping { deadline, killed: true },
                };
            }
            _ => {}
        }
        if self.stopping() {
            return;
        }
        for i in 0..self.slots.len() {
            if self.slots[i].respawn_at.is_some_and(|t| t <= now) {
                match self.spawn(i) {
                    Ok(()) => self.slots[i].restarts += 1,
                    // fork or pipe2 can fail for a while (EAGAIN, EMFILE): try again later.
                    Err(e) => {
                        let delay = Backoff::SCHEDULE[Backoff::SCHEDULE.len() - 1];
                        tracing::error!(child = %self.slots[i].role, error = %e, retry_in_ms = delay.as_millis() as u64, "respawn failed");
                        self.slots[i].respawn_at = Some(now + delay);
                    }
                }
            }
        }
    }

    fn status(&self) -> String {
        let up = self.slots.iter().filter(|s| matches!(s.role, Role::Worker(_)) && s.ready).count();
        let restarts: u64 = self.slots.iter().filter(|s| matches!(s.role, Role::Worker(_))).map(|s| s.restarts).sum();
        format!("{up}/{} workers up, {restarts} restarts", self.workers())
    }

    /// The supervisor's figures, as Prometheus text for the admin child.
    fn state_text(&self) -> String {
        let workers: Vec<(usize, &Slot)> =
            self.slots.iter().filter_map(|s| if let Role::Worker(w) = s.role { Some((w, s)) } else { None }).collect();
        let mut t = String::new();
        family(&mut t, m::WORKERS, "gauge", "Worker processes the supervisor keeps running.");
        t.push_str(&format!("{} {}\n", m::WORKERS, workers.len()));
        family(&mut t, m::WORKER_UP, "gauge", "Whether the worker is running and has reported ready.");
        for (w, s) in &workers {
            t.push_str(&format!("{}{{worker=\"{w}\"}} {}\n", m::WORKER_UP, u8::from(s.ready)));
        }
        family(&mut t, m::WORKER_RESTARTS, "counter", "Worker processes respawned by the supervisor.");
        for (w, s) in &workers {
            t.push_str(&format!("{}{{worker=\"{w}\"}} {}\n", m::WORKER_RESTARTS, s.restarts));
        }
        family(&mut t, m::SUPERVISOR_STOPPING, "gauge", "Whether the supervisor is shutting down.");
        t.push_str(&format!("{} {}\n", m::SUPERVISOR_STOPPING, u8::from(self.stopping())));
        t
    }

    /// Publishes state changes: the figures file, STATUS=, and (once) the ready line.
    fn publish(&mut self) {
        let state = self.state_text();
        if state != self.last_state {
            let path = admin::supervisor_state(&self.cfg.router.runtime_dir);
            let tmp = path.with_extension("prom.tmp");
            if let Err(e) = std::fs::write(&tmp, &state).and_then(|()| std::fs::rename(&tmp, &path)) {
                tracing::warn!(path = %path.display(), error = %e, "cannot write the supervisor figures");
            }
            self.last_state = state;
        }
        if self.phase == Phase::Starting && self.slots.iter().all(|s| s.ready) {
            self.phase = Phase::Running;
            println!("ready router={} admin={} workers={}", self.listen, self.admin_addr, self.workers());
            let _ = io::stdout().flush();
            tracing::info!(router = %self.listen, admin = %self.admin_addr, workers = self.workers(), "router ready");
            let status = self.status();
            notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
            self.last_status = status;
        }
        if !self.stopping() && self.phase != Phase::Starting {
            let status = self.status();
            if status != self.last_status {
                notify(&[NotifyState::Status(&status)]);
                self.last_status = status;
            }
        }
    }

    /// On a start-up failure: no child may outlive the supervisor's error exit.
    fn abort_children(&mut self) {
        let pids: Vec<_> = self.live().collect();
        for (role, pid) in &pids {
            send(*role, *pid, Signal::SIGKILL);
        }
        for (_, pid) in pids {
            let _ = waitpid(pid, None);
        }
    }
}

fn family(text: &mut String, name: &str, kind: &str, help: &str) {
    text.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
}

fn send(role: Role, pid: Pid, sig: Signal) {
    if let Err(e) = kill(pid, sig) {
        tracing::debug!(child = %role, pid = pid.as_raw(), signal = %sig, error = %e, "kill failed");
    }
}

/// Tells systemd (a no-op without `NOTIFY_SOCKET`).
fn notify(state: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}
