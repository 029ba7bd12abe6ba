//! A simulated worker: an OS thread running the real `flow::send`, whose
//! every effect call hands the baton to the scheduler and waits for its
//! answer. The scheduler serves one worker at a time, so exactly one thread
//! runs at a time and a seed replays exactly.
//!
//! A crash is a panic with a private payload raised inside an effect call,
//! caught at the worker's boundary (`resume_unwind`: no panic hook runs, so
//! nothing is printed).

use super::rng::Rng;
use crate::effects::Effects;
use crate::fleet::sabotage;
use crate::flow;
use crate::http::{Request, Response};
use crate::rekey::oauth2::types::{
    CredentialRecord, Purpose, Settings, StoredRecord, TransportError, WriteError,
};
use crate::testing::BytesHttp;
use core::time::Duration;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::thread::JoinHandle;

/// An effect call, as the scheduler sees it.
#[derive(Debug)]
pub enum Op {
    Http(Purpose, Request),
    Read,
    Write(u64, CredentialRecord),
    Sleep(Duration),
}

/// The scheduler's answer to an [`Op`].
#[derive(Debug)]
pub enum Reply {
    Http(Result<Response, TransportError>),
    Read(Result<StoredRecord, String>),
    Write(Result<u64, WriteError>),
    Slept,
    /// The worker dies inside this effect call.
    Crash,
}

/// How a call ended.
#[derive(Debug)]
pub enum Outcome {
    Returned(Result<Response, flow::Refusal>),
    Crashed,
    /// The protocol itself panicked: always a violation.
    Panicked(String),
}

/// What a worker says next: its next effect call, or that its call ended.
pub enum Next {
    Op(Op),
    Done(Outcome),
}

enum Command {
    Call,
    Reply(Reply),
}

struct Crash;
/// The scheduler is gone (a violation ended the run): leave quietly.
struct Gone;

pub struct Worker {
    tx: Sender<Command>,
    rx: Receiver<Next>,
    thread: Option<JoinHandle<()>>,
    stuck: bool,
}

/// A worker's view of the world: its clock is the simulated one plus its skew.
struct SimFx {
    tx: Sender<Next>,
    rx: Receiver<Command>,
    clock: Arc<AtomicU64>,
    skew_ms: i64,
    rng: Rng,
    /// Sabotage of the world: the random source repeats itself.
    stuck_random: bool,
}

impl SimFx {
    fn call(&mut self, op: Op) -> Reply {
        if self.tx.send(Next::Op(op)).is_err() {
            resume_unwind(Box::new(Gone));
        }
        match self.rx.recv() {
            Ok(Command::Reply(Reply::Crash)) => resume_unwind(Box::new(Crash)),
            Ok(Command::Reply(reply)) => reply,
            _ => resume_unwind(Box::new(Gone)),
        }
    }
}

fn mismatch(op: &str, reply: Reply) -> ! {
    panic!("scheduler answered {op} with {reply:?}")
}

impl BytesHttp for SimFx {
    fn send_bytes(&mut self, purpose: Purpose, req: &Request) -> Result<Response, TransportError> {
        match self.call(Op::Http(purpose, req.clone())) {
            Reply::Http(r) => r,
            other => mismatch("http", other),
        }
    }
}

impl Effects for SimFx {
    fn read_record(&mut self) -> Result<StoredRecord, String> {
        match self.call(Op::Read) {
            Reply::Read(r) => r,
            other => mismatch("read", other),
        }
    }
    fn write_record(
        &mut self,
        expected: u64,
        record: &CredentialRecord,
    ) -> Result<u64, WriteError> {
        match self.call(Op::Write(expected, record.clone())) {
            Reply::Write(r) => r,
            other => mismatch("write", other),
        }
    }
    fn now_ms(&self) -> u64 {
        self.clock
            .load(Ordering::SeqCst)
            .saturating_add_signed(self.skew_ms)
    }
    fn sleep(&mut self, d: Duration) {
        match self.call(Op::Sleep(d)) {
            Reply::Slept => {}
            other => mismatch("sleep", other),
        }
    }
}

impl crate::effects::Signing for SimFx {
    fn random_u64(&mut self) -> u64 {
        if self.stuck_random {
            return self.rng.clone().next_u64();
        }
        self.rng.next_u64()
    }
    /// The host's signer, with the simulated key (`jwt`). Not a scheduling
    /// point: it touches nothing another worker sees.
    fn sign(
        &mut self,
        alg: crate::rekey::oauth2::types::SigningAlgorithm,
        input: &[u8],
    ) -> Result<Vec<u8>, String> {
        Ok(super::jwt::sign(alg, input))
    }
}

/// A worker's random source (`wasi:random`): seeded, or, as a sabotage of
/// the world, stuck on one value.
pub struct Random {
    pub seed: u64,
    pub stuck: bool,
}

/// How long the scheduler waits for a worker to reach its next effect call
/// before calling it stuck (a loop without effects).
const STUCK: Duration = Duration::from_secs(20);

impl Worker {
    pub fn spawn(
        id: usize,
        settings: Settings,
        req: Request,
        clock: Arc<AtomicU64>,
        skew_ms: i64,
        random: Random,
        off: sabotage::Off,
    ) -> Worker {
        let (cmd_tx, cmd_rx) = channel();
        let (next_tx, next_rx) = channel();
        let thread = std::thread::Builder::new()
            .name(format!("sim-w{id}"))
            .spawn(move || {
                sabotage::set(off);
                let mut fx = SimFx {
                    tx: next_tx,
                    rx: cmd_rx,
                    clock,
                    skew_ms,
                    rng: Rng::new(random.seed),
                    stuck_random: random.stuck,
                };
                while let Ok(Command::Call) = fx.rx.recv() {
                    let run =
                        catch_unwind(AssertUnwindSafe(|| flow::send(&mut fx, &settings, &req)));
                    let outcome = match run {
                        Ok(result) => Outcome::Returned(result),
                        Err(p) if p.is::<Crash>() => Outcome::Crashed,
                        Err(p) if p.is::<Gone>() => return,
                        Err(p) => Outcome::Panicked(
                            p.downcast_ref::<String>()
                                .cloned()
                                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                                .unwrap_or_default(),
                        ),
                    };
                    if fx.tx.send(Next::Done(outcome)).is_err() {
                        return;
                    }
                }
            })
            .expect("spawn a simulated worker");
        Worker {
            tx: cmd_tx,
            rx: next_rx,
            thread: Some(thread),
            stuck: false,
        }
    }

    /// Starts a call and runs the worker to its first effect call.
    pub fn start(&mut self) -> Result<Next, String> {
        self.resume(Command::Call)
    }

    /// Answers the pending effect call and runs the worker to its next one.
    pub fn answer(&mut self, reply: Reply) -> Result<Next, String> {
        self.resume(Command::Reply(reply))
    }

    fn resume(&mut self, cmd: Command) -> Result<Next, String> {
        self.tx
            .send(cmd)
            .map_err(|_| "the worker thread is gone".to_string())?;
        self.rx.recv_timeout(STUCK).map_err(|e| match e {
            RecvTimeoutError::Timeout => {
                self.stuck = true;
                format!("the worker ran {STUCK:?} (wall clock) without an effect call")
            }
            RecvTimeoutError::Disconnected => "the worker thread is gone".into(),
        })
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Dropping the sender ends the thread's loop, or unwinds it with
        // `Gone` from inside a call. A thread stuck in a loop is left alone.
        drop(std::mem::replace(&mut self.tx, channel().0));
        if let Some(t) = self.thread.take()
            && !self.stuck
        {
            let _ = t.join();
        }
    }
}
