//! The seed notebook's scratch CNN: its layers and parameter count against the notebook's Keras summary,
//! its two modes, and its input checks.
use candle_core::{DType, Device, Tensor};
use candle_nn::{ModuleT, VarBuilder, VarMap};
use voc_classify::{ScratchCnn, ScratchCnnConfig};

fn fresh(config: ScratchCnnConfig) -> (VarMap, voc_classify::Result<ScratchCnn>) {
    let varmap = VarMap::new();
    let net = ScratchCnn::new(
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        config,
    );
    (varmap, net)
}

#[test]
fn layers_and_parameter_count_are_the_notebooks() {
    let (varmap, net) = fresh(ScratchCnnConfig::default());
    net.unwrap();
    let vars = varmap.data().lock().unwrap();
    let mut shapes: Vec<(String, Vec<usize>)> = vars
        .iter()
        .map(|(name, var)| (name.clone(), var.dims().to_vec()))
        .collect();
    shapes.sort();
    // Keras's summary, kernels in PyTorch's (out, in, kh, kw) / (out, in) order.
    let mut expected: Vec<(String, Vec<usize>)> = [
        ("conv1.weight", vec![64, 3, 7, 7]),
        ("conv1.bias", vec![64]),
        ("conv2.weight", vec![128, 64, 5, 5]),
        ("conv2.bias", vec![128]),
        ("conv3.weight", vec![145, 128, 3, 3]),
        ("conv3.bias", vec![145]),
        ("conv4.weight", vec![145, 145, 3, 3]),
        ("conv4.bias", vec![145]),
        ("conv5.weight", vec![128, 145, 3, 3]),
        ("conv5.bias", vec![128]),
        ("fc1.weight", vec![64, 512]),
        ("fc1.bias", vec![64]),
        ("fc2.weight", vec![64, 64]),
        ("fc2.bias", vec![64]),
        ("classifier.weight", vec![20, 64]),
        ("classifier.bias", vec![20]),
    ]
    .into_iter()
    .map(|(n, s)| (n.to_string(), s))
    .chain(
        [("bn1", 64), ("bn2", 128), ("bn3", 128)]
            .into_iter()
            .flat_map(|(bn, c)| {
                ["weight", "bias", "running_mean", "running_var"]
                    .map(|p| (format!("{bn}.{p}"), vec![c]))
            }),
    )
    .collect();
    expected.sort();
    assert_eq!(shapes, expected);
    let total: usize = shapes
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    let moving: usize = shapes
        .iter()
        .filter(|(n, _)| n.contains("running_"))
        .map(|(_, s)| s[0])
        .sum();
    assert_eq!((total, moving), (777_695, 640));
    assert_eq!(ScratchCnnConfig::default().flat_features().unwrap(), 512);
}

#[test]
fn eval_is_deterministic_and_training_updates_the_moving_statistics() -> anyhow::Result<()> {
    let (varmap, net) = fresh(ScratchCnnConfig::default());
    let net = net?;
    let x = Tensor::rand(0f32, 1f32, (2, 3, 150, 150), &Device::Cpu)?;
    let a = net.forward_t(&x, false)?;
    let b = ModuleT::forward_t(&net, &x, false)?;
    assert_eq!(a.dims(), &[2, 20]);
    assert_eq!(a.to_vec2::<f32>()?, b.to_vec2::<f32>()?);
    let mean_before = varmap.data().lock().unwrap()["bn1.running_mean"].to_vec1::<f32>()?;
    let logits = net.forward_t(&x, true)?;
    assert_eq!(logits.dims(), &[2, 20]);
    let mean_after = varmap.data().lock().unwrap()["bn1.running_mean"].to_vec1::<f32>()?;
    assert_ne!(
        mean_before, mean_after,
        "a training forward moves the running mean"
    );
    Ok(())
}

#[test]
fn bad_sizes_are_clear_errors() {
    // 108 -> conv 102 -> pool 34 -> conv 30 -> pool 10 -> convs 8, 6, 4 -> pool 1.
    let small = ScratchCnnConfig {
        input_size: 107,
        ..Default::default()
    };
    let err = fresh(small).1.unwrap_err().to_string();
    assert!(
        err.contains("at least 108x108") && err.contains("107x107"),
        "{err}"
    );
    let smallest = ScratchCnnConfig {
        input_size: 108,
        ..Default::default()
    };
    assert_eq!(smallest.flat_features().unwrap(), 128);
    let (_, net) = fresh(ScratchCnnConfig::default());
    let x = Tensor::zeros((1, 3, 224, 224), DType::F32, &Device::Cpu).unwrap();
    let err = net.unwrap().forward_t(&x, false).unwrap_err().to_string();
    assert!(err.contains("3 x 150 x 150"), "{err}");
}
