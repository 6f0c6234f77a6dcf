use super::*;

fn arange(n: usize, shape: &[i32]) -> Array {
    let v: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 3.0).collect();
    Array::from_slice(&v, shape)
}

/// `arange(12)` as (3, 4) and the tensors `a.f32`, `b.bf16`, `c.f16` made from it, plus
/// `d.u32` holding `u32s`.
fn mixed_dtypes(u32s: &[u32]) -> anyhow::Result<(Array, BTreeMap<String, Array>)> {
    let base = arange(12, &[3, 4]);
    let mut map = BTreeMap::new();
    map.insert("a.f32".to_string(), base.clone());
    map.insert("b.bf16".to_string(), base.as_dtype(Dtype::Bfloat16)?);
    map.insert("c.f16".to_string(), base.as_dtype(Dtype::Float16)?);
    map.insert(
        "d.u32".to_string(),
        Array::from_slice(u32s, &[u32s.len() as i32]),
    );
    Ok((base, map))
}

#[test]
fn round_trip_f32_bf16_f16_u32() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (base, map) = mixed_dtypes(&[1, 0xdead_beef, 7])?;
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

fn one_tensor_file(dir: &Path, name: &str) -> PathBuf {
    let mut m = BTreeMap::new();
    m.insert("a".to_string(), arange(4, &[2, 2]));
    let p = dir.join(name);
    save_file(&p, &m).unwrap();
    p
}

#[test]
fn index_paths_cannot_leave_the_folder() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let comp = root.path().join("comp");
    fs::create_dir(&comp)?;
    one_tensor_file(root.path(), "outside.safetensors");
    for bad in [
        "../outside.safetensors",
        "/etc/passwd",
        "sub/../../outside.safetensors",
        "",
    ] {
        let index = serde_json::json!({ "weight_map": { "a": bad } });
        fs::write(comp.join("m.safetensors.index.json"), index.to_string())?;
        let err = component_files(&comp).unwrap_err().to_string();
        assert!(err.contains("not a file name inside"), "{bad}: {err}");
        assert!(load_component(&comp).is_err());
    }
    // A link inside the folder pointing outside it is refused too.
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(
            root.path().join("outside.safetensors"),
            comp.join("link.safetensors"),
        )?;
        let index = serde_json::json!({ "weight_map": { "a": "link.safetensors" } });
        fs::write(comp.join("m.safetensors.index.json"), index.to_string())?;
        let err = component_files(&comp).unwrap_err().to_string();
        assert!(err.contains("leads outside"), "{err}");
    }
    Ok(())
}

/// Writes a safetensors file with a hand-made header (for header-corruption cases).
fn raw_file(path: &Path, header: &serde_json::Value, data: usize) {
    let h = header.to_string().into_bytes();
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend(h);
    bytes.extend(std::iter::repeat_n(0u8, data));
    fs::write(path, bytes).unwrap();
}

#[test]
fn header_errors_name_the_tensor_and_the_file() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let p = dir.path().join("h.safetensors");
    // shape needs 16 bytes, offsets hold 12
    raw_file(
        &p,
        &serde_json::json!({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}}),
        16,
    );
    for err in [
        read_header(&p).unwrap_err().to_string(),
        load_file(&p).unwrap_err().to_string(),
    ] {
        assert!(
            err.contains("`w`") && err.contains("h.safetensors"),
            "{err}"
        );
    }
    // data beyond the end of the file
    raw_file(
        &p,
        &serde_json::json!({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}),
        8,
    );
    let err = read_header(&p).unwrap_err().to_string();
    assert!(err.contains("truncated") && err.contains("`w`"), "{err}");
    // overlapping ranges
    raw_file(
        &p,
        &serde_json::json!({
            "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}),
        12,
    );
    let err = read_header(&p).unwrap_err().to_string();
    assert!(err.contains("overlap"), "{err}");
    // a good file: metadata and infos
    let mut m = BTreeMap::new();
    m.insert("x".to_string(), arange(6, &[2, 3]));
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    save_file_with_metadata(&p, &m, Some(meta))?;
    let h = read_header(&p)?;
    assert_eq!(h.metadata.get("format").map(String::as_str), Some("pt"));
    assert_eq!(h.tensors.len(), 1);
    assert_eq!(
        (h.tensors[0].dtype, h.tensors[0].shape.clone()),
        (Dtype::Float32, vec![2, 3])
    );
    assert_eq!(h.tensors[0].elements(), 6);
    // not a regular file
    let err = read_header(dir.path()).unwrap_err().to_string();
    assert!(err.contains("a directory"), "{err}");
    Ok(())
}

#[test]
fn for_each_tensor_follows_the_index() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    one_tensor_file(dir.path(), "s1.safetensors");
    one_tensor_file(dir.path(), "unlisted.safetensors");
    let index = serde_json::json!({ "weight_map": { "a": "s1.safetensors" } });
    fs::write(
        dir.path().join("m.safetensors.index.json"),
        index.to_string(),
    )?;
    let mut seen = Vec::new();
    for_each_tensor(dir.path(), &mut |h, t| {
        seen.push((
            h.path.file_name().unwrap().to_string_lossy().into_owned(),
            t.name.clone(),
        ));
        Ok(())
    })?;
    assert_eq!(seen, vec![("s1.safetensors".to_string(), "a".to_string())]);
    Ok(())
}

#[test]
fn atomic_writes_never_follow_a_planted_link() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let victim = dir.path().join("victim.txt");
    fs::write(&victim, b"keep")?;
    let target = dir.path().join("out.bin");
    // Links at every name the old scheme would have used.
    #[cfg(unix)]
    std::os::unix::fs::symlink(
        &victim,
        dir.path()
            .join(format!(".out.bin.tmp-{}", std::process::id())),
    )?;
    write_atomic(&target, b"new")?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(&target)?.permissions().mode() & 0o777, 0o644);
    }
    assert_eq!(fs::read(&victim)?, b"keep");
    assert_eq!(fs::read(&target)?, b"new");
    assert!(!fs::symlink_metadata(&target)?.file_type().is_symlink());
    Ok(())
}

#[test]
fn sources_fill_the_same_declaration() -> anyhow::Result<()> {
    fn declare(v: &mut Vars<'_>) -> (Array, Array) {
        let mut lin = v.pp("lin");
        let w = lin.take("weight", &[3, 8], Role::Weight { fan_in: 8 });
        let b = lin.take("bias", &[3], Role::Bias);
        (w, b)
    }
    // recorder: the parameter list
    let mut rec = ShapeRecorder::new(Dtype::Float32);
    declare(&mut Vars::new(&mut rec).pp("top"));
    let keys: Vec<_> = rec.params.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["top.lin.weight", "top.lin.bias"]);
    assert_eq!(rec.params[0].elements(), 24);
    // random: shapes, dtype, reproducible, distribution from the role
    let mut r1 = RandomSource::new(3, Dtype::Bfloat16)?;
    let (w1, b1) = declare(&mut Vars::new(&mut r1));
    r1.finish()?;
    let mut r2 = RandomSource::new(3, Dtype::Bfloat16)?;
    let (w2, _) = declare(&mut Vars::new(&mut r2));
    assert_eq!((w1.shape(), w1.dtype()), (&[3, 8][..], Dtype::Bfloat16));
    assert_eq!(b1.shape(), &[3]);
    assert!(mlx_rs::ops::array_eq(&w1, &w2, false)?.item_exact::<bool>());
    assert_eq!(Role::NormWeight.distribution(), (1.0, 0.1));
    assert_eq!(Role::Weight { fan_in: 4 }.distribution(), (0.0, 0.5));
    // strict: the same declaration reads a checkpoint
    let mut t = Tensors::new("mem");
    t.insert("lin.weight", arange(24, &[3, 8]));
    let mut l = StrictLoader::new(t, Dtype::Float32);
    let (w, _) = declare(&mut Vars::new(&mut l));
    assert_eq!(w.shape(), &[3, 8]);
    let err = l.finish(&[]).unwrap_err().to_string();
    assert!(err.contains("1 missing: lin.bias"), "{err}");
    Ok(())
}

#[test]
fn a_deleted_header_entry_is_named_as_such() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let p = dir.path().join("gap.safetensors");
    // `a` [0, 8) and `c` [16, 24): the entry of the tensor at [8, 16) was deleted.
    raw_file(
        &p,
        &serde_json::json!({
            "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "c": {"dtype": "F32", "shape": [2], "data_offsets": [16, 24]}}),
        24,
    );
    let err = load_file(&p).unwrap_err().to_string();
    assert!(
        err.contains("[8, 16)") && err.contains("between `a` and `c`") && err.contains("missing"),
        "{err}"
    );
    raw_file(
        &p,
        &serde_json::json!({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}),
        12,
    );
    let err = read_header(&p).unwrap_err().to_string();
    assert!(
        err.contains("trailing bytes") && err.contains("after `a`"),
        "{err}"
    );
    Ok(())
}

#[test]
fn inventories_are_checked_against_expectations() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut m = BTreeMap::new();
    m.insert("w".to_string(), arange(6, &[2, 3]));
    m.insert("i".to_string(), Array::from_slice(&[1i32, 2], &[2]));
    m.insert("extra".to_string(), arange(1, &[1]));
    save_file(&dir.path().join("m.safetensors"), &m)?;
    let inv = inventory(dir.path())?;
    let e = |k: &str, s: &[usize], f: bool| Expected {
        key: k.into(),
        shape: s.to_vec(),
        floating: f,
    };
    let err = check_inventory(
        dir.path(),
        &[
            e("w", &[3, 2], true),
            e("i", &[2], true),
            e("gone", &[1], true),
        ],
        &inv,
        &[],
    )
    .unwrap_err()
    .to_string();
    for n in [
        "1 missing: gone",
        "1 unexpected: extra",
        "w (expected [3, 2], found [2, 3])",
    ] {
        assert!(err.contains(n), "{n}: {err}");
    }
    let err = check_inventory(
        dir.path(),
        &[e("w", &[2, 3], true), e("i", &[2], true)],
        &inv,
        &["ex"],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("i is Int32"), "{err}");
    check_inventory(
        dir.path(),
        &[e("w", &[2, 3], true), e("i", &[2], false)],
        &inv,
        &["ex"],
    )?;
    let err = check_count(dir.path(), "num_layers", 1_000_000, 32, 13, 3)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("num_layers = 1000000 needs at least 32000013"),
        "{err}"
    );
    assert!(check_count(dir.path(), "x", usize::MAX, 2, 0, 3).is_err());
    Ok(())
}

#[test]
fn lazy_loading_reads_the_same_tensors_when_evaluated() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (base, map) = mixed_dtypes(&[1, 9, 7])?;
    let path = dir.path().join("x.safetensors");
    save_file(&path, &map)?;
    // The same bytes under another name: MLX's lazy loader needs the extension, so this one
    // is read at once; both must give the same tensors.
    let other = dir.path().join("x.lora");
    fs::copy(&path, &other)?;
    for p in [&path, &other] {
        let back = load_file_lazy(p)?;
        assert_eq!(back.len(), 4);
        for (k, v) in &map {
            let b = back.get(k).expect("key present");
            assert_eq!((b.dtype(), b.shape()), (v.dtype(), v.shape()), "{k}");
            let eq = mlx_rs::ops::array_eq(b, v, false)?;
            assert!(eq.item_exact::<bool>(), "{k} differs in {}", p.display());
        }
    }
    // Lazy: the bytes are read when a tensor is evaluated, not when the file is opened.
    let lazy = load_file_lazy(&path)?;
    let mut changed = BTreeMap::new();
    changed.insert(
        "a.f32".to_string(),
        mlx_rs::ops::add(&base, Array::from_f32(1.0))?,
    );
    for (k, v) in &map {
        if k != "a.f32" {
            changed.insert(k.clone(), v.clone());
        }
    }
    // Rewritten in place (same file, same size), not replaced by a rename.
    let staged = dir.path().join("changed.safetensors");
    save_file(&staged, &changed)?;
    fs::write(&path, fs::read(&staged)?)?;
    let a = lazy.get("a.f32").expect("key present");
    assert_eq!(a.as_slice::<f32>()[0], base.as_slice::<f32>()[0] + 1.0);
    // A corrupt header fails before anything is opened lazily, naming the file.
    let bad = dir.path().join("bad.safetensors");
    fs::write(&bad, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")?;
    let err = load_file_lazy(&bad).unwrap_err();
    assert!(err.to_string().contains("bad.safetensors"), "{err}");
    Ok(())
}
