use super::*;

fn arange(n: usize, shape: &[i32]) -> Array {
    let v: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 3.0).collect();
    Array::from_slice(&v, shape)
}

#[test]
fn round_trip_f32_bf16_f16_u32() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let base = arange(12, &[3, 4]);
    let mut map = BTreeMap::new();
    map.insert("a.f32".to_string(), base.clone());
    map.insert("b.bf16".to_string(), base.as_dtype(Dtype::Bfloat16)?);
    map.insert("c.f16".to_string(), base.as_dtype(Dtype::Float16)?);
    map.insert(
        "d.u32".to_string(),
        Array::from_slice(&[1u32, 0xdead_beef, 7], &[3]),
    );
    let path = dir.path().join("x.safetensors");
    save_file(&path, &map)?;
    let back = load_file(&path)?;
    assert_eq!(back.len(), 4);
    for (k, v) in &map {
        let b = back.get(k).expect("key present");
        assert_eq!(b.dtype(), v.dtype(), "{k}");
        assert_eq!(b.shape(), v.shape(), "{k}");
        let eq = mlx_rs::ops::array_eq(b, v, false)?;
        assert!(eq.item_exact::<bool>(), "{k} differs after the round trip");
    }
    // bf16 keeps exactly the bf16-rounded values (0.5 steps are exact in bf16).
    let bf = back.get("b.bf16").unwrap().as_dtype(Dtype::Float32)?;
    assert_eq!(bf.as_slice::<f32>(), base.as_slice::<f32>());
    Ok(())
}

#[test]
fn sharded_component_and_strict_errors() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut s1 = BTreeMap::new();
    s1.insert("x.weight".to_string(), arange(6, &[2, 3]));
    let mut s2 = BTreeMap::new();
    s2.insert("y.bias".to_string(), arange(2, &[2]));
    s2.insert("z.extra".to_string(), arange(1, &[1]));
    save_file(&dir.path().join("m-00001-of-00002.safetensors"), &s1)?;
    save_file(&dir.path().join("m-00002-of-00002.safetensors"), &s2)?;
    let index = serde_json::json!({
        "metadata": {},
        "weight_map": {
            "x.weight": "m-00001-of-00002.safetensors",
            "y.bias": "m-00002-of-00002.safetensors",
            "z.extra": "m-00002-of-00002.safetensors"
        }
    });
    fs::write(
        dir.path().join("m.safetensors.index.json"),
        index.to_string(),
    )?;
    let t = load_component(dir.path())?;
    assert_eq!(t.len(), 3);

    let mut l = StrictLoader::new(t, Dtype::Bfloat16);
    let x = l.take("x.weight", &[2, 3]);
    assert_eq!(x.dtype(), Dtype::Bfloat16);
    let _ = l.take("y.bias", &[3]); // wrong shape
    let _ = l.take("w.missing", &[4]);
    let err = l.finish(&[]).unwrap_err().to_string();
    assert!(err.contains("1 missing: w.missing"), "{err}");
    assert!(err.contains("1 unexpected: z.extra"), "{err}");
    assert!(err.contains("y.bias (expected [3], found [2])"), "{err}");

    let filtered = load_component_filtered(dir.path(), &|k| !k.starts_with("z."))?;
    assert_eq!(filtered.len(), 2);
    assert!(filtered.get("z.extra").is_none());

    let mut l = StrictLoader::new(load_component(dir.path())?, Dtype::Float32);
    l.take("x.weight", &[2, 3]);
    l.take("y.bias", &[2]);
    l.finish(&["z."])?;
    Ok(())
}

#[test]
fn missing_shard_is_reported() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    fs::write(
        dir.path().join("m.safetensors.index.json"),
        r#"{"weight_map": {"a": "gone.safetensors"}}"#,
    )?;
    let err = load_component(dir.path()).unwrap_err().to_string();
    assert!(err.contains("gone.safetensors"), "{err}");
    let empty = tempfile::tempdir()?;
    let err = load_component(empty.path()).unwrap_err().to_string();
    assert!(err.contains("no *.safetensors"), "{err}");
    Ok(())
}

#[test]
fn corrupt_file_is_a_format_error() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let p = dir.path().join("bad.safetensors");
    fs::write(&p, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")?;
    let err = load_file(&p).unwrap_err();
    assert!(matches!(err, WeightsError::Format { .. }), "{err}");
    assert!(err.to_string().contains("bad.safetensors"));
    Ok(())
}
