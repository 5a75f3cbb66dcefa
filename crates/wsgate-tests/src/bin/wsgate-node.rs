//! `wsgate` as the end-to-end tests run it: the shipped program, built in this package so
//! that the tests can find it through `CARGO_BIN_EXE_wsgate-node`.

fn main() -> anyhow::Result<()> {
    wsgate::run()
}
