//! The `wsgate` binary: everything it does is in the library (`wsgate::run`), so the
//! integration-test crate (`crates/wsgate-tests`) can run the same program.

fn main() -> anyhow::Result<()> {
    wsgate::run()
}
