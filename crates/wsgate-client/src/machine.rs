//! The life of one client connection as a pure state machine.
//!
//! [`Machine::on`] takes what the driver task observed ([`Input`]: the handshake finished,
//! an attempt failed, the connection was lost, the wait is over, the owner closed) and the
//! time, and returns what the task must do next ([`Action`]s, in order). It owns the policies
//! that decide the next step, the [`BackoffState`] and the [`CircuitBreaker`], and reads no
//! socket, clock or channel, so every path (reconnect, breaker cooldown, give-up, close from
//! any phase) is unit-tested below without sockets. The driver (`driver.rs`) is the thin
//! task: it performs each action, and the ones that do I/O end with the next input.
//!
//! This is the shape of NautilusTrader's WebSocket client (an explicit connection state,
//! one place that decides to reconnect): there is no other code that could start a second
//! reconnect loop (seed 002, failure 1).
//!
//! ```text
//!  Connecting ─Opened─▶ Authenticating ─Authenticated─▶ Subscribing ─Restored─▶ Active
//!      │                      │                              │                    │
//!      └──AttemptFailed───────┴──────────────────────────────┘                  Lost
//!                 ▼                                                               ▼
//!             BackingOff ◀──────────────────────────────(auto_reconnect)─────────┘
//!                 │ WaitOver ─▶ Connecting        out of attempts ─▶ Failed
//!  Stop (any non-terminal phase) ─▶ Closed;  Lost without auto_reconnect ─▶ Closed
//! ```
//!
//! **Flapping.** Being ready is not yet a success: a connection counts as one (the backoff
//! resets, the breaker closes) only once it stayed up for `min_stable` (`Serve` carries
//! the instant; the session reports `Stable` then, and stays open). One lost sooner
//! counts as a failed attempt, so a server that accepts, authenticates and closes at once
//! is retried with growing delays and can open the breaker, instead of being hammered at
//! the first delay forever. A handshake answered 429/503 with `Retry-After` waits at least
//! that long (capped by the backoff's `max_delay`).

use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::breaker::{Admission, BreakerState, CircuitBreaker, Transition};
use crate::{BackoffState, CloseReason, ConnectionState, Error, Event};

/// Longest single wait, so `now + wait` cannot overflow with absurd settings.
const MAX_WAIT: Duration = Duration::from_secs(86_400 * 365);

/// Where the connection is. Commands are served offline while `Connecting` (the handshake
/// is the one slow step they must not wait for) and `BackingOff`; during `Authenticating`
/// and `Subscribing` they wait, so user traffic always follows auth and the replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// The WebSocket handshake.
    Connecting,
    /// Auth messages sent, waiting for the expected reply.
    Authenticating,
    /// Replaying every subscription, then flushing the offline outbox.
    Subscribing,
    /// Ready: user traffic flows.
    Active,
    /// Waiting out the backoff delay, or the breaker's cooldown when longer.
    BackingOff {
        /// The breaker's cooldown decided the wait.
        circuit_open: bool,
    },
    /// Out of attempts. Terminal.
    Failed,
    /// Closed by the owner, or lost with reconnection off. Terminal.
    Closed,
}

impl Phase {
    /// The state shown to users.
    pub fn state(self) -> ConnectionState {
        match self {
            Phase::Connecting | Phase::Authenticating | Phase::Subscribing => {
                ConnectionState::Connecting
            }
            Phase::Active => ConnectionState::Connected,
            Phase::BackingOff {
                circuit_open: false,
            } => ConnectionState::Reconnecting,
            Phase::BackingOff { circuit_open: true } => ConnectionState::CircuitOpen,
            Phase::Failed => ConnectionState::Failed,
            Phase::Closed => ConnectionState::Closed,
        }
    }
}

/// What the driver task observed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Input {
    /// The handshake finished.
    Opened,
    /// The auth step finished.
    Authenticated,
    /// Subscriptions replayed and the outbox flushed.
    Restored,
    /// The handshake, auth or replay failed.
    AttemptFailed(Error),
    /// A ready connection stayed up for `min_stable` (reported by the session, which goes on).
    Stable,
    /// A ready connection ended.
    Lost(Error),
    /// The backoff wait is over.
    WaitOver,
    /// The owner closed the client (or dropped every handle).
    Stop,
}

/// What the driver task must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Action {
    /// Publish the state (with the breaker's) to watchers and the snapshot.
    SetState(ConnectionState, BreakerState),
    /// Count and log an attempt, then run the handshake → `Opened` / `AttemptFailed` / `Stop`.
    Connect {
        /// Failed attempts before this one.
        attempt: u32,
    },
    /// Send the auth messages and await the reply → `Authenticated` / `AttemptFailed`.
    Authenticate,
    /// Replay subscriptions, flush the outbox → `Restored` / `AttemptFailed`.
    Restore,
    /// Serve the ready connection until it ends → `Lost` / `Stop`; report `Stable` at
    /// `stable_at` (`None`: already counted as stable).
    Serve {
        /// When the connection counts as stable.
        stable_at: Option<Instant>,
    },
    /// Sleep until then, serving commands offline → `WaitOver` / `Stop`.
    Wait(Instant),
    /// Log and show the breaker's state change.
    Breaker(Transition),
    /// Keep as the snapshot's last error.
    RecordError(Error),
    /// The snapshot's count of failed attempts in a row.
    Attempts(u32),
    /// The connection is ready: attempts reset, connected since now, a reconnect counted
    /// when it is one.
    MarkConnected {
        /// Not the first connection.
        reconnected: bool,
    },
    /// Send to the owner's event stream.
    Emit(Event),
    /// Emit the data frames that arrived during auth.
    EmitEarly,
    /// Fail every pending request.
    FailPending(Error),
    /// Drop queued messages (the client has stopped).
    DropOutbox,
    /// Answer `close` callers; the task ends.
    Finish,
}

/// The connection state machine; see the module doc.
pub(crate) struct Machine {
    phase: Phase,
    backoff: BackoffState,
    breaker: CircuitBreaker,
    auto_reconnect: bool,
    has_auth: bool,
    ever_connected: bool,
    /// How long a ready connection must last to count as a success.
    min_stable: Duration,
    /// Cap on a server's `Retry-After` (the backoff's `max_delay`).
    retry_after_cap: Duration,
    /// The current connection is ready but not yet stable.
    unproven: bool,
}

/// What the machine is built from, beside its policies.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub auto_reconnect: bool,
    pub has_auth: bool,
    pub min_stable: Duration,
    pub retry_after_cap: Duration,
}

impl Machine {
    pub fn new(backoff: BackoffState, breaker: CircuitBreaker, settings: Settings) -> Self {
        Self {
            phase: Phase::Connecting,
            backoff,
            breaker,
            auto_reconnect: settings.auto_reconnect,
            has_auth: settings.has_auth,
            ever_connected: false,
            min_stable: settings.min_stable,
            retry_after_cap: settings.retry_after_cap,
            unproven: false,
        }
    }

    /// The first attempt.
    pub fn start(&mut self) -> Vec<Action> {
        self.begin_attempt(Vec::new())
    }

    #[cfg(test)]
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The next actions after `input`, observed at `now`.
    ///
    /// # Panics
    /// On an input the current phase cannot produce (a bug in the driver task).
    pub fn on(&mut self, input: Input, now: Instant) -> Vec<Action> {
        let mut acts = Vec::new();
        match (self.phase, input) {
            (Phase::Closed | Phase::Failed, input) => {
                unreachable!("{input:?} after the client stopped")
            }
            (_, Input::Stop) => self.close(CloseReason::ClientClosed, acts),
            (Phase::Connecting, Input::Opened) if self.has_auth => {
                self.phase = Phase::Authenticating;
                vec![Action::Authenticate]
            }
            (Phase::Connecting, Input::Opened) | (Phase::Authenticating, Input::Authenticated) => {
                self.phase = Phase::Subscribing;
                vec![Action::Restore]
            }
            (Phase::Subscribing, Input::Restored) => self.ready(now, acts),
            (
                Phase::Connecting | Phase::Authenticating | Phase::Subscribing,
                Input::AttemptFailed(err),
            ) => {
                warn!(attempt = self.backoff.retries(), error = %err, "connection attempt failed");
                acts.push(Action::RecordError(err.clone()));
                let tr = self.breaker.record_failure(now.into_std());
                acts.extend(tr.map(Action::Breaker));
                self.retry(err, now, acts)
            }
            (Phase::Active, Input::Stable) => {
                self.proven(&mut acts);
                self.set_phase(Phase::Active, &mut acts);
                acts
            }
            (Phase::Active, Input::Lost(err)) => {
                warn!(error = %err, "connection lost");
                acts.push(Action::FailPending(Error::ConnectionLost));
                acts.push(Action::RecordError(err.clone()));
                if std::mem::take(&mut self.unproven) {
                    info!(min_stable = ?self.min_stable, "connection was not stable: backing off further");
                    let tr = self.breaker.record_failure(now.into_std());
                    acts.extend(tr.map(Action::Breaker));
                }
                if self.auto_reconnect {
                    self.retry(err, now, acts)
                } else {
                    self.close(CloseReason::ConnectionLost(err), acts)
                }
            }
            (Phase::BackingOff { .. }, Input::WaitOver) => {
                // Open → HalfOpen happens here; the attempt that follows is the probe.
                let (admission, tr) = self.breaker.admit(now.into_std());
                acts.extend(tr.map(Action::Breaker));
                if let Admission::Wait(left) = admission {
                    debug!(?left, "breaker still open after wait");
                }
                self.begin_attempt(acts)
            }
            (phase, input) => unreachable!("{input:?} while {phase:?}"),
        }
    }

    fn set_phase(&mut self, phase: Phase, acts: &mut Vec<Action>) {
        self.phase = phase;
        acts.push(Action::SetState(phase.state(), self.breaker.state()));
    }

    fn begin_attempt(&mut self, mut acts: Vec<Action>) -> Vec<Action> {
        self.set_phase(Phase::Connecting, &mut acts);
        acts.push(Action::Connect {
            attempt: self.backoff.retries(),
        });
        acts
    }

    /// The connection proved stable: a success.
    fn proven(&mut self, acts: &mut Vec<Action>) {
        self.unproven = false;
        self.backoff.reset();
        acts.push(Action::Attempts(0));
        acts.extend(self.breaker.record_success().map(Action::Breaker));
    }

    fn ready(&mut self, now: Instant, mut acts: Vec<Action>) -> Vec<Action> {
        let stable_at = if self.min_stable.is_zero() {
            self.proven(&mut acts);
            None
        } else {
            self.unproven = true;
            Some(now + self.min_stable.min(MAX_WAIT))
        };
        let reconnected = self.ever_connected;
        self.ever_connected = true;
        acts.push(Action::MarkConnected { reconnected });
        self.set_phase(Phase::Active, &mut acts);
        if reconnected {
            info!("reconnected");
        } else {
            info!("connected");
        }
        acts.push(Action::Emit(if reconnected {
            Event::Reconnected
        } else {
            Event::Opened
        }));
        acts.push(Action::EmitEarly);
        acts.push(Action::Serve { stable_at });
        acts
    }

    /// Backs off before the next attempt, or gives up when the policy is out of attempts.
    fn retry(&mut self, error: Error, now: Instant, mut acts: Vec<Action>) -> Vec<Action> {
        let Some(delay) = self.backoff.next_delay() else {
            return self.give_up(error, acts);
        };
        let retry = self.backoff.retries();
        acts.push(Action::Attempts(retry));
        let cooldown = self.breaker.remaining(now.into_std());
        let asked = match &error {
            Error::Throttled { retry_after, .. } => (*retry_after).min(self.retry_after_cap),
            _ => Duration::ZERO,
        };
        let wait = delay.max(cooldown).max(asked).min(MAX_WAIT);
        let circuit_open = cooldown > Duration::ZERO;
        self.set_phase(Phase::BackingOff { circuit_open }, &mut acts);
        info!(retry, ?wait, "reconnecting");
        acts.push(Action::Emit(Event::Reconnecting {
            attempt: retry,
            delay: wait,
            error,
        }));
        acts.push(Action::Wait(now + wait));
        acts
    }

    fn give_up(&mut self, last: Error, mut acts: Vec<Action>) -> Vec<Action> {
        let attempts = self.backoff.retries();
        let error = Error::GaveUp {
            attempts,
            last_error: Box::new(last),
        };
        warn!(attempts, error = %error, "giving up");
        acts.push(Action::RecordError(error.clone()));
        self.stop(Phase::Failed, Event::GaveUp { error }, acts)
    }

    fn close(&mut self, reason: CloseReason, acts: Vec<Action>) -> Vec<Action> {
        info!(?reason, "closed");
        self.stop(Phase::Closed, Event::Closed { reason }, acts)
    }

    fn stop(&mut self, phase: Phase, event: Event, mut acts: Vec<Action>) -> Vec<Action> {
        acts.push(Action::FailPending(Error::NotConnected));
        acts.push(Action::DropOutbox);
        self.set_phase(phase, &mut acts);
        acts.push(Action::Emit(event));
        acts.push(Action::Finish);
        acts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Backoff, BreakerConfig, FixedJitter};

    const SEC: Duration = Duration::from_secs(1);

    fn machine(backoff: Backoff, breaker: BreakerConfig, auto: bool, auth: bool) -> Machine {
        let settings = Settings {
            auto_reconnect: auto,
            has_auth: auth,
            min_stable: backoff.delay_cap(),
            retry_after_cap: backoff.delay_cap(),
        };
        Machine::new(
            backoff.start_with(Box::new(FixedJitter(0.0))),
            CircuitBreaker::new(breaker),
            settings,
        )
    }

    fn default_machine(auth: bool) -> Machine {
        machine(
            Backoff::new().jitter(0.0),
            BreakerConfig::disabled(),
            true,
            auth,
        )
    }

    fn closed() -> BreakerState {
        BreakerState::Closed
    }

    fn connect(m: &mut Machine, now: Instant) -> Vec<Action> {
        let mut acts = m.on(Input::Opened, now);
        if acts == [Action::Authenticate] {
            acts = m.on(Input::Authenticated, now);
        }
        assert_eq!(acts, [Action::Restore]);
        assert_eq!(m.phase(), Phase::Subscribing);
        m.on(Input::Restored, now)
    }

    fn ready(reconnected: bool, now: Instant) -> Vec<Action> {
        vec![
            Action::MarkConnected { reconnected },
            Action::SetState(ConnectionState::Connected, closed()),
            Action::Emit(if reconnected {
                Event::Reconnected
            } else {
                Event::Opened
            }),
            Action::EmitEarly,
            Action::Serve {
                stable_at: Some(now + Duration::from_secs(60)),
            },
        ]
    }

    #[test]
    fn connects_through_auth_and_replay_then_serves() {
        let now = Instant::now();
        let mut m = default_machine(true);
        assert_eq!(
            m.start(),
            [
                Action::SetState(ConnectionState::Connecting, closed()),
                Action::Connect { attempt: 0 }
            ]
        );
        assert_eq!(m.on(Input::Opened, now), [Action::Authenticate]);
        assert_eq!(m.phase(), Phase::Authenticating);
        assert_eq!(m.on(Input::Authenticated, now), [Action::Restore]);
        assert_eq!(m.on(Input::Restored, now), ready(false, now));
        assert_eq!(m.phase(), Phase::Active);

        let mut plain = default_machine(false);
        plain.start();
        assert_eq!(
            plain.on(Input::Opened, now),
            [Action::Restore],
            "no auth step"
        );
    }

    #[test]
    fn a_lost_connection_backs_off_then_reconnects_as_a_reconnect() {
        let now = Instant::now();
        let mut m = default_machine(false);
        m.start();
        connect(&mut m, now);
        let lost = Error::Transport("reset".into());
        assert_eq!(
            m.on(Input::Lost(lost.clone()), now),
            [
                Action::FailPending(Error::ConnectionLost),
                Action::RecordError(lost.clone()),
                Action::Attempts(1),
                Action::SetState(ConnectionState::Reconnecting, closed()),
                Action::Emit(Event::Reconnecting {
                    attempt: 1,
                    delay: SEC,
                    error: lost,
                }),
                Action::Wait(now + SEC),
            ]
        );
        let later = now + SEC;
        assert_eq!(
            m.on(Input::WaitOver, later),
            [
                Action::SetState(ConnectionState::Connecting, closed()),
                Action::Connect { attempt: 1 }
            ]
        );
        assert_eq!(connect(&mut m, later), ready(true, later));
        // A connection that stayed up for `min_stable` (default: the 60 s cap) is a
        // success: it resets the backoff, and the next loss waits the first delay again.
        let stable = later + Duration::from_secs(60);
        assert_eq!(
            m.on(Input::Stable, stable),
            [
                Action::Attempts(0),
                Action::SetState(ConnectionState::Connected, closed())
            ]
        );
        let acts = m.on(Input::Lost(Error::ConnectionLost), stable);
        assert!(acts.contains(&Action::Attempts(1)), "{acts:?}");
        assert!(acts.contains(&Action::Wait(stable + SEC)), "{acts:?}");
    }

    #[test]
    fn a_flapping_connection_backs_off_further_and_opens_the_breaker() {
        let breaker = BreakerConfig {
            failure_threshold: 3,
            cooldown: Duration::from_secs(600),
        };
        let mut m = machine(Backoff::new().jitter(0.0), breaker, true, true);
        let mut now = Instant::now();
        m.start();
        let mut waits = Vec::new();
        for _ in 0..3 {
            connect(&mut m, now);
            // Lost right after being ready: not stable.
            let acts = m.on(Input::Lost(Error::ConnectionLost), now);
            let until = acts
                .iter()
                .find_map(|a| match a {
                    Action::Wait(t) => Some(*t),
                    _ => None,
                })
                .expect("waits");
            waits.push(until - now);
            now = until;
            m.on(Input::WaitOver, now);
        }
        assert_eq!(waits[..2], [SEC, 2 * SEC], "grows: {waits:?}");
        assert_eq!(
            waits[2],
            Duration::from_secs(600),
            "breaker cooldown: {waits:?}"
        );
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_cap() {
        let now = Instant::now();
        let backoff = Backoff::new()
            .jitter(0.0)
            .max_delay(Duration::from_secs(20));
        let mut m = machine(backoff, BreakerConfig::disabled(), true, false);
        m.start();
        let throttled = |s| Error::Throttled {
            status: 429,
            retry_after: Duration::from_secs(s),
        };
        let acts = m.on(Input::AttemptFailed(throttled(5)), now);
        assert!(acts.contains(&Action::Wait(now + 5 * SEC)), "{acts:?}");
        m.on(Input::WaitOver, now);
        let acts = m.on(Input::AttemptFailed(throttled(3600)), now);
        assert!(
            acts.contains(&Action::Wait(now + 20 * SEC)),
            "capped: {acts:?}"
        );
    }

    #[test]
    fn failed_attempts_grow_the_delay_then_give_up() {
        let now = Instant::now();
        let mut m = machine(
            Backoff::new().jitter(0.0).max_attempts(Some(2)),
            BreakerConfig::disabled(),
            true,
            false,
        );
        m.start();
        let err = Error::Connect("refused".into());
        let acts = m.on(Input::AttemptFailed(err.clone()), now);
        assert!(acts.contains(&Action::Wait(now + SEC)), "{acts:?}");
        m.on(Input::WaitOver, now + SEC);
        let acts = m.on(Input::AttemptFailed(err.clone()), now + SEC);
        assert!(acts.contains(&Action::Wait(now + 3 * SEC)), "2 s: {acts:?}");
        m.on(Input::WaitOver, now + 3 * SEC);
        let gave_up = Error::GaveUp {
            attempts: 2,
            last_error: Box::new(err.clone()),
        };
        assert_eq!(
            m.on(Input::AttemptFailed(err.clone()), now + 3 * SEC),
            [
                Action::RecordError(err),
                Action::RecordError(gave_up.clone()),
                Action::FailPending(Error::NotConnected),
                Action::DropOutbox,
                Action::SetState(ConnectionState::Failed, closed()),
                Action::Emit(Event::GaveUp { error: gave_up }),
                Action::Finish,
            ]
        );
        assert_eq!(m.phase(), Phase::Failed);
    }

    #[test]
    fn an_open_breaker_makes_the_wait_its_cooldown_and_probes_after() {
        let now = Instant::now();
        let breaker = BreakerConfig {
            failure_threshold: 2,
            cooldown: Duration::from_secs(30),
        };
        let mut m = machine(Backoff::new().jitter(0.0), breaker, true, false);
        m.start();
        let err = Error::Connect("refused".into());
        m.on(Input::AttemptFailed(err.clone()), now);
        m.on(Input::WaitOver, now + SEC);
        let acts = m.on(Input::AttemptFailed(err.clone()), now + SEC);
        let open = Transition {
            from: BreakerState::Closed,
            to: BreakerState::Open,
        };
        assert!(acts.contains(&Action::Breaker(open)), "{acts:?}");
        assert!(
            acts.contains(&Action::SetState(
                ConnectionState::CircuitOpen,
                BreakerState::Open
            )),
            "{acts:?}"
        );
        let until = now + SEC + Duration::from_secs(30);
        assert!(acts.contains(&Action::Wait(until)), "cooldown: {acts:?}");
        assert_eq!(m.phase(), Phase::BackingOff { circuit_open: true });

        let acts = m.on(Input::WaitOver, until);
        let half = Transition {
            from: BreakerState::Open,
            to: BreakerState::HalfOpen,
        };
        assert_eq!(
            acts,
            [
                Action::Breaker(half),
                Action::SetState(ConnectionState::Connecting, BreakerState::HalfOpen),
                Action::Connect { attempt: 2 },
            ]
        );
    }

    #[test]
    fn without_auto_reconnect_a_loss_closes() {
        let now = Instant::now();
        let mut m = machine(Backoff::new(), BreakerConfig::disabled(), false, false);
        m.start();
        connect(&mut m, now);
        let err = Error::HeartbeatTimeout(SEC);
        let acts = m.on(Input::Lost(err.clone()), now);
        assert_eq!(
            acts[acts.len() - 3..],
            [
                Action::SetState(ConnectionState::Closed, closed()),
                Action::Emit(Event::Closed {
                    reason: CloseReason::ConnectionLost(err),
                }),
                Action::Finish,
            ]
        );
        assert_eq!(m.phase(), Phase::Closed);
    }

    #[test]
    fn stop_closes_from_every_phase() {
        let now = Instant::now();
        let stopped = [
            Action::FailPending(Error::NotConnected),
            Action::DropOutbox,
            Action::SetState(ConnectionState::Closed, closed()),
            Action::Emit(Event::Closed {
                reason: CloseReason::ClientClosed,
            }),
            Action::Finish,
        ];
        let inputs: [&[Input]; 5] = [
            &[],
            &[Input::Opened],
            &[Input::Opened, Input::Authenticated],
            &[Input::Opened, Input::Authenticated, Input::Restored],
            &[Input::AttemptFailed(Error::Connect("refused".into()))],
        ];
        for path in inputs {
            let mut m = default_machine(true);
            m.start();
            for input in path {
                m.on(input.clone(), now);
            }
            assert_eq!(m.on(Input::Stop, now), stopped, "after {path:?}");
            assert_eq!(m.phase(), Phase::Closed);
        }
    }
}
