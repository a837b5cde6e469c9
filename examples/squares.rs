//! Squares of 0..3 as tasks: the smallest Arca program.

#[arca::remote]
fn square(x: i64) -> i64 {
    x * x
}

fn main() -> anyhow::Result<()> {
    arca::init()?; // in a worker process, this runs tasks and never returns
    let refs: Vec<_> = (0..4).map(square::remote).collect();
    println!("{:?}", arca::get_many(&refs)?);
    arca::shutdown();
    Ok(())
}
