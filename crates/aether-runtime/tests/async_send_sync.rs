//! Compile-time checks: the runtime's handles and futures can cross threads.

#![allow(dead_code)]

use aether_runtime::{ActorRef, AskError, Runtime, RuntimeBuilder};

fn is_send_sync<T: Send + Sync>() {}
fn is_send<T: Send>(_: &T) {}

#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Unit;

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl aether_runtime::Actor for Unit {
    const TYPE: &'static str = "unit";
    type Command = ();
    type Event = ();
    type Error = Never;
    fn handle(&self, (): &()) -> Result<Vec<()>, Never> {
        Ok(Vec::new())
    }
    fn apply(&mut self, (): &()) {}
}

#[test]
fn handles_are_send_and_sync() {
    is_send_sync::<Runtime<Unit>>();
    is_send_sync::<ActorRef<Unit>>();
    is_send_sync::<RuntimeBuilder<Unit>>();
    is_send_sync::<AskError<Never>>();
}

fn futures_are_send(runtime: Runtime<Unit>, actor: ActorRef<Unit>) {
    is_send(&actor.ask(()));
    is_send(&actor.tell(()));
    is_send(&runtime.ask("a", ()));
    is_send(&runtime.stop_vm("a"));
    is_send(&runtime.shutdown());
    is_send(&runtime.create_vm("a"));
}
