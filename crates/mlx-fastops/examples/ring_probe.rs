//! Two ranks on one machine, MLX's ring backend: each contributes its rank; prints the
//! gathered vector. `MLX_HOSTFILE` and `MLX_RANK` set as `mlx.launch` sets them.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    use mlx_fastops::distributed::{CommBackend, Group};
    let g = Group::init(CommBackend::Ring, true)?;
    let x = mlx_rs::Array::from_slice(&[g.rank() as f32, 10.0], &[1, 2]);
    let all = g.all_gather(&x)?;
    all.eval()?;
    println!(
        "rank {} of {}: {:?}",
        g.rank(),
        g.size(),
        all.as_slice::<f32>()
    );
    Ok(())
}
