//! What stays loaded between generations (`Residency`) and `preload`: the same images
//! whatever is kept, and nothing built twice under `KeepAll`.

mod common;
mod logged;

use logged::*;
use qwen_image::Residency;

#[test]
fn each_residency_gives_the_same_images_and_builds_what_it_says() -> anyhow::Result<()> {
    let req = request();
    let (mut staged, staged_log) = logged(Residency::Staged)?;
    let want = staged.generate(&req)?;
    staged.generate(&req)?;
    assert_eq!(staged_log.borrow().len(), 6, "{:?}", staged_log.borrow());

    let (mut kept, kept_log) = logged(Residency::KeepTransformer)?;
    for _ in 0..2 {
        let got = kept.generate(&req)?;
        assert!(got[0].data == want[0].data);
    }
    assert_eq!(
        *kept_log.borrow(),
        ["text_encoder", "transformer", "vae", "text_encoder", "vae"]
    );

    let (mut all, all_log) = logged(Residency::KeepAll)?;
    all.preload(&[])?;
    assert_eq!(*all_log.borrow(), ["transformer", "text_encoder", "vae"]);
    for _ in 0..2 {
        let result = all.generate_with(&req, &mut |_| {})?;
        assert!(result.images[0].data == want[0].data);
        // Nothing is loaded, so no load time is reported.
        assert!(result.timings.load_text_encoder.time.is_zero());
        assert!(result.timings.load_vae.time.is_zero());
    }
    assert_eq!(all_log.borrow().len(), 3, "KeepAll built again");
    Ok(())
}
