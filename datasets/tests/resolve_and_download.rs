//! The resolution order and the downloader, against folders and a local HTTP server on
//! 127.0.0.1 that can serve wrong bytes or cut the connection mid-file.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::thread;

use datasets::download::{download, sha256_hex};
use datasets::idx::{IdxImages, encode_images, encode_labels, gzip};
use datasets::{DataError, Resolver, Source, registry};

/// Writes a tiny but valid dataset (`n` train, 2 test images) into `dir`.
fn write_dataset(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let imgs = |count| encode_images(&IdxImages { count, rows: 28, cols: 28, pixels: vec![7; count * 784] });
    let labs = |count: usize| encode_labels(&(0..count).map(|i| (i % 10) as u8).collect::<Vec<_>>());
    std::fs::write(dir.join("train-images-idx3-ubyte.gz"), gzip(&imgs(n))).unwrap();
    std::fs::write(dir.join("train-labels-idx1-ubyte.gz"), gzip(&labs(n))).unwrap();
    // Raw (uncompressed) files are accepted too.
    std::fs::write(dir.join("t10k-images-idx3-ubyte"), imgs(2)).unwrap();
    std::fs::write(dir.join("t10k-labels-idx1-ubyte"), labs(2)).unwrap();
}

fn resolver(root: &Path) -> Resolver {
    Resolver {
        explicit: None,
        local: root.join("local"),
        system: root.join("system"),
        cache: Some(root.join("cache")),
        base_url: Some("http://127.0.0.1:9/".into()),
        download: false,
        quiet: true,
        allow_subset: false,
    }
}

fn via(source: &Source) -> &'static str {
    match source {
        Source::Dir { via, .. } => via,
        Source::Embedded => "embedded",
    }
}

#[test]
fn resolution_order() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let r = resolver(root);
    // Without the full set the embedded subset is used only when asked for, or by its own name.
    let err = r.load("fashion-mnist").unwrap_err().to_string();
    assert!(err.contains("not found") && err.contains("--allow-subset") && err.contains("dataset-fashion-mnist"), "{err}");
    assert_eq!(via(&r.clone().allowing_subset(true).load("fashion-mnist").unwrap().source), "embedded");
    assert_eq!(via(&r.load("fashion-mnist-subset").unwrap().source), "embedded");
    let r = r.allowing_subset(true);

    write_dataset(&root.join("cache/fashion-mnist"), 5);
    assert_eq!(via(&r.load("fashion-mnist").unwrap().source), "cache");

    write_dataset(&root.join("system/fashion-mnist"), 4);
    assert_eq!(via(&r.load("fashion-mnist").unwrap().source), "system package");

    write_dataset(&root.join("local/fashion-mnist"), 3);
    let d = r.load("fashion-mnist").unwrap();
    assert_eq!((via(&d.source), d.train.len(), d.test.len()), ("./data", 3, 2));

    let mut explicit = r.clone();
    write_dataset(&root.join("mine"), 6);
    explicit.explicit = Some(root.join("mine"));
    assert_eq!(explicit.load("fashion-mnist").unwrap().train.len(), 6);
    // An explicit folder that lacks the files is an error, not a silent fallback.
    explicit.explicit = Some(root.join("nothing-here"));
    let err = explicit.load("fashion-mnist").unwrap_err().to_string();
    assert!(err.contains("missing train-images-idx3-ubyte.gz"), "{err}");
}

#[test]
fn unknown_dataset_and_mnist_without_subset() {
    let tmp = tempfile::tempdir().unwrap();
    let r = resolver(tmp.path());
    assert!(r.load("cifar").unwrap_err().to_string().contains("known: fashion-mnist, mnist"));
    assert!(matches!(r.clone().allowing_subset(true).load("mnist"), Err(DataError::NotFound { subset: false, .. })));
}

#[test]
fn count_mismatch_between_images_and_labels() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    write_dataset(&dir, 5);
    std::fs::write(dir.join("train-labels-idx1-ubyte.gz"), gzip(&encode_labels(&[1, 2, 3]))).unwrap();
    let err = datasets::resolve::load_dir(&registry::FASHION_MNIST, &dir, "test").unwrap_err().to_string();
    assert!(err.contains("has 5 images but") && err.contains("has 3 labels"), "{err}");
    std::fs::write(dir.join("train-labels-idx1-ubyte.gz"), gzip(&encode_labels(&[1, 2, 3, 4, 42]))).unwrap();
    let err = datasets::resolve::load_dir(&registry::FASHION_MNIST, &dir, "test").unwrap_err().to_string();
    assert!(err.contains("label 42 at index 4"), "{err}");
}

/// How the test server answers one request.
#[derive(Clone, Copy)]
enum Serve {
    Whole,
    /// Announce the full length, send half, close.
    CutMidFile,
}

/// Serves `body` to up to `requests` connections, then stops; returns the base URL.
fn serve(body: Vec<u8>, how: Serve, requests: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming().take(requests) {
            let mut stream = stream.unwrap();
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            stream.write_all(head.as_bytes()).unwrap();
            let n = match how {
                Serve::Whole => body.len(),
                Serve::CutMidFile => body.len() / 2,
            };
            let _ = stream.write_all(&body[..n]);
        }
    });
    format!("http://{addr}/")
}

fn no_leftovers(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir).map(|rd| rd.map(|e| e.unwrap().path()).collect()).unwrap_or_default()
}

#[test]
fn download_verifies_checksum_and_is_atomic() {
    let tmp = tempfile::tempdir().unwrap();
    let body: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
    let good = sha256_hex(&body);
    let dest = tmp.path().join("file.gz");

    let url = serve(body.clone(), Serve::Whole, 1);
    let err = download(&format!("{url}f"), &dest, &"0".repeat(64), true).unwrap_err();
    assert!(matches!(err, DataError::Checksum { .. }), "{err}");
    assert!(no_leftovers(tmp.path()).is_empty(), "a failed download left files behind");

    let url = serve(body.clone(), Serve::CutMidFile, 1);
    let err = download(&format!("{url}f"), &dest, &good, true).unwrap_err();
    assert!(matches!(err, DataError::Download { .. }), "{err}");
    assert!(no_leftovers(tmp.path()).is_empty(), "a cut download left files behind");

    let url = serve(body.clone(), Serve::Whole, 1);
    download(&format!("{url}f"), &dest, &good, true).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), body);
}

#[test]
fn refused_connection_is_a_clear_error() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let tmp = tempfile::tempdir().unwrap();
    let err = download(&format!("http://127.0.0.1:{port}/x"), &tmp.path().join("x"), "00", true).unwrap_err().to_string();
    assert!(err.starts_with("download of http://127.0.0.1"), "{err}");
}
