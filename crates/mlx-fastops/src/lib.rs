//! tmp
#[cfg(test)]
mod tests {
    #[test]
    fn smoke() {
        let a = mlx_rs::Array::from_slice(&[1.0f32, 2.0, 3.0], &[3]);
        let b = mlx_rs::ops::multiply(&a, &a).unwrap();
        assert_eq!(b.as_slice::<f32>(), &[1.0, 4.0, 9.0]);
        let k = mlx_rs::random::key(0).unwrap();
        let r = mlx_rs::random::normal::<f32>(&[4], None, None, Some(&k)).unwrap();
        println!("{:?}", r.as_slice::<f32>());
        let h = a.as_dtype(mlx_rs::Dtype::Bfloat16).unwrap();
        println!("{:?}", h);
    }
}
