//! The user's own data (`[data] format = "npy" | "cifar" | "image-folder"`): each format reads
//! into images of the right shape, channel-major, with their labels; training on them builds the
//! model for their shape and classes, augments reproducibly (a resumed run ends where an
//! unbroken one does) and exports a model the engine runs as burn does; bad files and recipes
//! get one clear error.

use std::path::{Path, PathBuf};

use sparsify::data::{self, Files};
use sparsify::recipe::Recipe;
use sparsify::train::{self, TrainOptions};

/// Writes a `.npy` file of `descr` values (little-endian bytes in `data`).
fn npy(path: &Path, descr: &str, shape: &[usize], data: &[u8]) {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}\n");
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).unwrap();
}

fn i64s(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// `n` RGB `side x side` images in 3 classes: each class a fixed colour pattern plus noise.
fn rgb_images(n: usize, side: usize, seed: u64) -> (Vec<u8>, Vec<i64>) {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut noise = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 33) % 60) as i64 - 30
    };
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for i in 0..n {
        let class = i % 3;
        for c in 0..3 {
            for y in 0..side {
                for x in 0..side {
                    let on = (c == class) ^ ((x + y * (class + 1)) % 4 == 0);
                    pixels.push((if on { 200 } else { 40 } + noise()).clamp(0, 255) as u8);
                }
            }
        }
        labels.push(class as i64);
    }
    (pixels, labels)
}

/// A folder with RGB uint8 `[N, 3, side, side]` images and int64 labels as `.npy` files.
fn npy_dataset(dir: &Path, side: usize) -> [PathBuf; 4] {
    let paths = ["train_x", "train_y", "test_x", "test_y"].map(|n| dir.join(format!("{n}.npy")));
    for (x, y, n, seed) in [(&paths[0], &paths[1], 240, 1), (&paths[2], &paths[3], 60, 2)] {
        let (pixels, labels) = rgb_images(n, side, seed);
        npy(x, "|u1", &[n, 3, side, side], &pixels);
        npy(y, "<i8", &[n], &i64s(&labels));
    }
    paths
}

fn recipe_text(model: &str, data: &str, epochs: usize) -> String {
    format!(
        r#"version = 1
[model]
{model}
[data]
{data}
batch_size = 32
[optimizer]
type = "sgd"
momentum = 0.9
nesterov = true
weight_decay = 1e-4
[[modifiers]]
type = "epoch_range"
start_epoch = 0
end_epoch = {epochs}
[[modifiers]]
type = "learning_rate"
schedule = "cosine"
init_lr = 0.05
[[modifiers]]
type = "gmp"
params = "__ALL_PRUNABLE__"
init_sparsity = 0.0
final_sparsity = 0.5
start_epoch = 0
end_epoch = {epochs}
update_frequency = 0.5
"#
    )
}

fn npy_data(paths: &[PathBuf; 4]) -> String {
    let [a, b, c, d] = paths.each_ref().map(|p| p.display().to_string());
    format!("format = \"npy\"\ntrain_x = \"{a}\"\ntrain_y = \"{b}\"\ntest_x = \"{c}\"\ntest_y = \"{d}\"")
}

fn opts(out: &Path) -> TrainOptions {
    TrainOptions { recipe_path: "test.toml".into(), ..TrainOptions::quiet(out) }
}

#[test]
fn rgb_npy_images_train_augmented_resume_exactly_and_run_in_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let paths = npy_dataset(dir.path(), 12);
    let text = recipe_text("name = \"rescnn\"", &format!("{}\nrandom_crop = 2\nflip = true", npy_data(&paths)), 3);
    let r = Recipe::parse(&text, "test.toml", &[]).unwrap();
    assert!(r.to_toml().contains("random_crop = 2") && r.to_toml().contains("flip = true"), "{}", r.to_toml());

    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let unbroken = train::train(&r, &text, &opts(&a)).unwrap();
    assert_eq!((unbroken.net.input, unbroken.net.classes), ([3, 12, 12], 3));
    assert!(unbroken.metrics.last().unwrap().test_accuracy > 0.6, "learns the colours: {:?}", unbroken.metrics.last());
    let mut o = opts(&b);
    o.stop_after = Some(2);
    train::train(&r, &text, &o).unwrap();
    o.stop_after = None;
    o.resume = true;
    let resumed = train::train(&r, &text, &o).unwrap();
    for (x, y) in unbroken.net.params.iter().zip(&resumed.net.params) {
        assert_eq!(x.values, y.values, "{} differs after resuming an augmented run", x.name);
    }
    let info: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(a.join("run.json")).unwrap()).unwrap();
    assert_eq!(info["input"], serde_json::json!([3, 12, 12]));
    assert_eq!(info["normalization"][0].as_array().unwrap().len(), 3, "a mean per channel: {info}");

    // Without augmentation the same recipe trains differently (the draws are used).
    let plain = Recipe::parse(&recipe_text("name = \"rescnn\"", &npy_data(&paths), 3), "test.toml", &[]).unwrap();
    let without = train::train(&plain, &text, &opts(&dir.path().join("c"))).unwrap();
    assert_ne!(without.metrics[0].train_loss, unbroken.metrics[0].train_loss);

    // The exported model gives burn's logits in the engine on the test images.
    let data = train::load_data(&r, None, false, true).unwrap();
    let order: Vec<usize> = (0..data.test.len()).collect();
    let batch = datasets::batch::batches(&data.test, &order, data.test.len(), &data.norm, None).next().unwrap();
    let burn = sparsify::step::logits(&unbroken.net, &sparsify::step::eval_device(), batch.inputs.clone(), batch.len());
    let path = dir.path().join("model.onnx");
    sparsify::export::export(&unbroken.net, &path, sparsify::export::Format::from_path(&path)).unwrap();
    let model = engine::compile::compile(engine::load(&path).unwrap(), engine::compile::Options::new(Default::default()).unwrap()).unwrap();
    assert_eq!(model.input_shape, vec![3, 12, 12]);
    let out = engine::exec::Session::new(&model, 2).unwrap().run(&batch.inputs, batch.len()).unwrap();
    let diff = out.iter().zip(&burn).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(diff < 1e-4, "engine and burn differ by {diff}");
}

#[test]
fn float_features_train_an_mlp_with_the_recipes_normalisation() {
    let dir = tempfile::tempdir().unwrap();
    let paths = ["train_x", "train_y", "test_x", "test_y"].map(|n| dir.path().join(format!("{n}.npy")));
    for (x, y, n) in [(&paths[0], &paths[1], 300), (&paths[2], &paths[3], 100)] {
        // Two classes, told apart by the sign of the first feature.
        let labels: Vec<i32> = (0..n).map(|i| (i % 2) as i32).collect();
        let features: Vec<f32> = (0..n * 5).map(|k| if k % 5 == 0 { labels[k / 5] as f32 * 4.0 - 2.0 } else { (k % 7) as f32 }).collect();
        npy(x, "<f4", &[n, 5], &features.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>());
        npy(y, "<i4", &[n], &labels.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>());
    }
    let text = recipe_text("name = \"mlp\"\nhidden = [16]", &format!("{}\nmean = [0.5]\nstd = [2.0]", npy_data(&paths)), 2);
    let r = Recipe::parse(&text, "test.toml", &[]).unwrap();
    let data = train::load_data(&r, None, false, true).unwrap();
    assert_eq!((data.train.shape(), data.classes), ([1, 1, 5], 2));
    assert_eq!(data.norm, datasets::Normalization::uniform(0.5, 2.0, 1));
    let sum = train::train(&r, &text, &opts(&dir.path().join("run"))).unwrap();
    assert!(sum.metrics.last().unwrap().test_accuracy > 0.95, "{:?}", sum.metrics.last());
}

/// CIFAR records: label byte(s) then 3x32x32 bytes; image `i`'s bytes are `i + channel`.
fn cifar_file(path: &Path, labels: &[u8], label_bytes: usize) {
    let mut bytes = Vec::new();
    for (i, &l) in labels.iter().enumerate() {
        if label_bytes == 2 {
            bytes.push(l / 5);
        }
        bytes.push(l);
        (0..3).for_each(|c| bytes.extend(std::iter::repeat_n((i + c) as u8, 1024)));
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn cifar_binary_batches_read_channel_major_with_their_labels() {
    let dir = tempfile::tempdir().unwrap();
    let ten = dir.path().join("cifar-10-batches-bin");
    std::fs::create_dir(&ten).unwrap();
    for k in 1..=5 {
        cifar_file(&ten.join(format!("data_batch_{k}.bin")), &[k, 9, 0], 1);
    }
    cifar_file(&ten.join("test_batch.bin"), &[3, 4], 1);
    let d = data::load("cifar", &Files::Cifar { path: dir.path().to_path_buf() }).unwrap();
    assert_eq!((d.train.len(), d.test.len(), d.num_classes, d.train.shape()), (15, 2, 10, [3, 32, 32]));
    assert_eq!(&d.train.labels[..6], &[1, 9, 0, 2, 9, 0]);
    let second = &d.train.pixels.bytes().unwrap()[d.train.range(1)];
    assert_eq!((second[0], second[1024], second[2048]), (1, 2, 3), "channel-major planes");

    let hundred = tempfile::tempdir().unwrap();
    cifar_file(&hundred.path().join("train.bin"), &[99, 42], 2);
    cifar_file(&hundred.path().join("test.bin"), &[7], 2);
    let d = data::load("cifar100", &Files::Cifar { path: hundred.path().to_path_buf() }).unwrap();
    assert_eq!((d.num_classes, d.train.labels.clone()), (100, vec![99, 42]), "the fine labels");
}

#[test]
fn image_folders_read_in_class_order_resized_grey_or_rgb() {
    let dir = tempfile::tempdir().unwrap();
    let colours = [("blue", [0u8, 0, 255]), ("red", [255, 0, 0])];
    for split in ["train", "test"] {
        for (class, rgb) in colours {
            let folder = dir.path().join(split).join(class);
            std::fs::create_dir_all(&folder).unwrap();
            let img = image::RgbImage::from_pixel(20, 10, image::Rgb(rgb));
            img.save(folder.join("a.png")).unwrap();
            img.save(folder.join("b.jpg")).unwrap();
            std::fs::write(folder.join("notes.txt"), "not an image").unwrap();
        }
    }
    let files = |channels| Files::ImageFolder { train: dir.path().join("train"), test: dir.path().join("test"), size: 6, channels };
    let d = data::load("colours", &files(3)).unwrap();
    assert_eq!((d.train.len(), d.num_classes, d.train.shape()), (4, 2, [3, 6, 6]));
    assert_eq!(d.train.labels, vec![0, 0, 1, 1], "classes in name order: blue, red");
    let red = &d.train.pixels.bytes().unwrap()[d.train.range(2)];
    assert!(red[..36].iter().all(|&v| v == 255) && red[36..].iter().all(|&v| v == 0), "red is the first plane");
    let grey = data::load("colours", &files(1)).unwrap();
    assert_eq!(grey.train.shape(), [1, 6, 6]);
    let blue = &grey.train.pixels.bytes().unwrap()[grey.train.range(0)];
    assert!(blue.iter().all(|&v| (15..=25).contains(&v)), "blue's luma is about 18: {blue:?}");
}

/// Each bad input fails with one line naming what is wrong.
#[test]
fn bad_user_data_gets_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let good = npy_dataset(dir.path(), 8);
    let file = |name: &str| dir.path().join(name);
    let load = |paths: &[PathBuf; 4]| {
        let [train_x, train_y, test_x, test_y] = paths.clone();
        data::load("npy", &Files::Npy { train_x, train_y, test_x, test_y }).map(|_| ()).unwrap_err().to_string()
    };
    let with = |index: usize, path: PathBuf| {
        let mut p = good.clone();
        p[index] = path;
        p
    };
    npy(&file("short_y.npy"), "<i8", &[5], &i64s(&[0, 1, 2, 0, 1]));
    npy(&file("float_y.npy"), "<f4", &[2], &[0, 0, 0, 0, 0, 0, 0x80, 0x3f]);
    npy(&file("negative_y.npy"), "<i8", &[60], &i64s(&[-1; 60]));
    npy(&file("int_x.npy"), "<i8", &[60, 1, 1, 1], &i64s(&[1; 60]));
    npy(&file("five_d.npy"), "|u1", &[60, 1, 1, 1, 1], &[1; 60]);
    npy(&file("small_x.npy"), "|u1", &[60, 3, 4, 4], &[1; 60 * 48]);
    npy(&file("one_class_y.npy"), "<i8", &[60], &i64s(&[0; 60]));
    for (paths, says) in [
        (with(1, file("short_y.npy")), "has 240 images but"),
        (with(3, file("float_y.npy")), "labels must be integers"),
        (with(3, file("negative_y.npy")), "label -1 at index 0 is not a class index"),
        (with(2, file("int_x.npy")), "images must be uint8 or float32"),
        (with(2, file("five_d.npy")), "images must be [N, C, H, W]"),
        (with(2, file("small_x.npy")), "training images are [3, 8, 8] but test images are [3, 4, 4]"),
        (with(0, file("missing.npy")), "missing.npy"),
    ] {
        let err = load(&paths);
        assert!(err.contains(says) && !err.contains('\n'), "{says}: {err}");
    }
    let mut single = good.clone();
    npy(&file("one_class_train_y.npy"), "<i8", &[240], &i64s(&[0; 240]));
    single[1] = file("one_class_train_y.npy");
    single[3] = file("one_class_y.npy");
    assert!(load(&single).contains("needs at least 2"), "{}", load(&single));

    let cifar = file("cifar");
    std::fs::create_dir(&cifar).unwrap();
    let err = data::load("c", &Files::Cifar { path: cifar.clone() }).unwrap_err().to_string();
    assert!(err.contains("no CIFAR binary batches"), "{err}");
    std::fs::write(cifar.join("test_batch.bin"), [0u8; 100]).unwrap();
    let err = data::load("c", &Files::Cifar { path: cifar.clone() }).unwrap_err().to_string();
    assert!(err.contains("data_batch_1.bin") || err.contains("3073-byte"), "{err}");

    let folders = file("folders");
    for (split, class) in [("train", "cat"), ("test", "dog")] {
        std::fs::create_dir_all(folders.join(split).join(class)).unwrap();
        image::GrayImage::new(4, 4).save(folders.join(split).join(class).join("x.png")).unwrap();
    }
    let files = Files::ImageFolder { train: folders.join("train"), test: folders.join("test"), size: 4, channels: 1 };
    let err = data::load("f", &files).unwrap_err().to_string();
    assert!(err.contains("class folder 'dog' has no counterpart"), "{err}");
    std::fs::create_dir_all(folders.join("train").join("dog")).unwrap();
    std::fs::write(folders.join("train").join("dog").join("broken.png"), b"not a png").unwrap();
    let err = data::load("f", &files).unwrap_err().to_string();
    assert!(err.contains("broken.png") && err.contains("not a readable"), "{err}");

    // A model that does not fit the images is refused when training starts.
    std::fs::create_dir_all(file("tiny")).unwrap();
    let text = recipe_text("name = \"lenet5\"", &npy_data(&npy_dataset(&file("tiny"), 2)), 1);
    let r = Recipe::parse(&text, "test.toml", &[]).unwrap();
    let err = train::train(&r, &text, &opts(&file("run"))).unwrap_err().to_string();
    assert!(err.contains("does not fit") && err.contains("[3, 2, 2]"), "{err}");
    // Normalisation constants for another number of channels.
    let r = Recipe::parse(&recipe_text("name = \"rescnn\"", &format!("{}\nstd = [1.0, 2.0]", npy_data(&good)), 1), "t.toml", &[]).unwrap();
    let err = train::load_data(&r, None, false, true).err().unwrap().to_string();
    assert!(err.contains("std: 2 values for images of 3 channels"), "{err}");
}

#[test]
fn data_tables_name_their_format_and_paths() {
    let parse = |data: &str| Recipe::parse(&recipe_text("name = \"lenet5\"", data, 1), "r.toml", &[]).map(|_| ()).unwrap_err().to_string();
    for (data, says) in [
        ("format = \"npy\"\ntrain_x = \"a\"\ntrain_y = \"b\"\ntest_x = \"c\"", "r.toml:4: test_y: format = \"npy\" needs test_y"),
        ("format = \"cifar\"\npath = \"c\"\ntrain_x = \"a\"", "train_x: is not a setting of format = \"cifar\""),
        ("dataset = \"mnist\"\npath = \"c\"", "path: is not a setting of a named dataset"),
        ("format = \"image-folder\"\ntrain = \"a\"\ntest = \"b\"\nchannels = 2", "channels: must be 1 (grey) or 3 (RGB)"),
        ("format = \"image-folder\"\ntrain = \"a\"\ntest = \"b\"\nsize = 0", "size: must be 1..=4096"),
        ("format = \"parquet\"", "unknown variant `parquet`"),
        ("std = [0.0]", "std: must be one or more positive numbers"),
        ("random_crop = -1", "random_crop: must be a whole number"),
    ] {
        let err = parse(data);
        assert!(err.contains(says), "{says}: {err}");
    }
}

/// The same images as a named dataset or as `.npy` files with the same normalisation train to
/// the same metrics: the user's data take exactly the named datasets' path.
#[test]
fn fashion_mnist_as_npy_files_trains_exactly_as_the_named_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let d = datasets::embedded::load().unwrap();
    let paths = ["train_x", "train_y", "test_x", "test_y"].map(|n| dir.path().join(format!("{n}.npy")));
    for (split, x, y) in [(&d.train, &paths[0], &paths[1]), (&d.test, &paths[2], &paths[3])] {
        npy(x, "|u1", &[split.len(), 28, 28], split.pixels.bytes().unwrap());
        npy(y, "<i8", &[split.len()], &i64s(&split.labels.iter().map(|&l| l as i64).collect::<Vec<_>>()));
    }
    let model = "name = \"mlp\"\nhidden = [32]";
    let named = recipe_text(model, "dataset = \"fashion-mnist-subset\"", 1);
    let files = recipe_text(model, &format!("{}\nmean = [{}]\nstd = [{}]", npy_data(&paths), d.norm.mean[0], d.norm.std[0]), 1);
    let run = |text: &str, out: &str| {
        let r = Recipe::parse(text, "test.toml", &[]).unwrap();
        train::train(&r, text, &opts(&dir.path().join(out))).unwrap()
    };
    let (a, b) = (run(&named, "named"), run(&files, "files"));
    assert_eq!(a.metrics[0].train_loss, b.metrics[0].train_loss);
    assert_eq!(a.metrics[0].test_accuracy, b.metrics[0].test_accuracy);
    for (x, y) in a.net.params.iter().zip(&b.net.params) {
        assert_eq!(x.values, y.values, "{}", x.name);
    }
}
