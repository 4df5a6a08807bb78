//! `ReloadModel` reads only weights an operator put in the model folder:
//! a path outside it, a symlink out of it, a device or a file that is not
//! weights is refused with an error that names the field and never shows
//! what the file holds.

use contracts::numerics::v1::{self as pb, numerics_service_client::NumericsServiceClient};
use service_runtime::TracedChannel;
use tonic::Code;

use crate::api::client;

/// The bytes a secret file starts with, and what an error would show if
/// it read them as a safetensors header length.
const SECRET: &[u8] = b"root:*:20000:0:99999:7:::\nhunter2\n";

fn leaked(message: &str) -> bool {
    let length = u64::from_le_bytes(SECRET[..8].try_into().unwrap());
    message.contains(&length.to_string()) || message.contains("root") || message.contains("hunter2")
}

async fn refused(client: &mut NumericsServiceClient<TracedChannel>, path: &str) -> tonic::Status {
    client
        .reload_model(pb::ReloadModelRequest {
            weights_path: path.into(),
        })
        .await
        .expect_err("refused")
}

#[tokio::test]
async fn only_regular_weights_files_inside_the_model_folder_are_loaded_and_none_is_echoed() {
    let root = std::env::temp_dir().join(format!("numerics-reload-{}", std::process::id()));
    let (models, elsewhere) = (root.join("models"), root.join("elsewhere"));
    std::fs::create_dir_all(&models).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    let outside = elsewhere.join("secret");
    std::fs::write(&outside, SECRET).unwrap();
    // Inside the folder but not weights (an operator's mistake).
    std::fs::write(models.join("notes.txt"), SECRET).unwrap();
    std::os::unix::fs::symlink(&outside, models.join("link.safetensors")).unwrap();

    let mut config = numerics::Config::for_tests();
    config.serving.model_dir = models.clone();
    let running = numerics::start(config).await.unwrap();
    let mut client = client(&running).await;

    let status = refused(&mut client, &outside.display().to_string()).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().starts_with("weights_path: ")
            && status.message().contains("NUMERICS_MODEL_DIR"),
        "names the field and the folder: {}",
        status.message()
    );
    for path in [
        "notes.txt",
        "link.safetensors",
        "../elsewhere/secret",
        "/dev/zero",
        "/proc/self/environ",
    ] {
        let status = refused(&mut client, path).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{path}: {status:?}");
        assert!(
            status.message().starts_with("weights_path: "),
            "{path}: {}",
            status.message()
        );
        assert!(
            !leaked(status.message()),
            "{path} leaks: {}",
            status.message()
        );
    }
    // Still serving the shipped model, and a real file in the folder loads.
    let weights = numerics::serving::shipped_model()
        .unwrap()
        .to_weights()
        .to_bytes();
    std::fs::write(models.join("again.safetensors"), weights).unwrap();
    client
        .reload_model(pb::ReloadModelRequest {
            weights_path: "again.safetensors".into(),
        })
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&root);
    running.shutdown().await;
}
