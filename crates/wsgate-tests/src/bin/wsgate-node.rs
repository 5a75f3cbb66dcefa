//! `wsgate` as the end-to-end tests run it: the shipped program, built in this package so
//! that the tests run the same program the users run (`wsgate_tests::wsgate_bin`).

fn main() -> anyhow::Result<()> {
    wsgate::run()
}
