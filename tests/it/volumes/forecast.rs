//! Time to full through the actor, over a clock the test moves: a volume that grows is
//! forecast to fill, `volume.filling` fires once, `inspect` shows the forecast, and the
//! samples are saved under the state directory and read again at the next start.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use lucid_actors::Config;
use lucid_actors::clock::ManualClock;
use lucid_actors::config::ByteSize;
use lucid_actors::events;
use lucid_actors::volume::{CheckThresholds, Forecast, InspectVolume, VolumeActor, VolumeHandle};

use super::{create, name};

fn start(
    root: &std::path::Path,
    history: &std::path::Path,
    clock: Arc<ManualClock>,
) -> VolumeHandle {
    let mut c = Config::defaults().expect("defaults");
    c.volumes.root = root.to_path_buf();
    // Every usage tick walks every volume: the test's clock, not tokio's, spaces them.
    c.volumes.usage_max_age = Duration::ZERO;
    c.volumes.min_free = ByteSize(0);
    VolumeActor::start_with_history(
        &c.volumes,
        &c.supervisor,
        Some(history.to_path_buf()),
        clock,
    )
}

#[actix_rt::test]
async fn a_growing_volume_is_forecast_to_fill_and_warned_about_once() {
    let root = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("tempdir");
    let history = state.path().join("volumes/usage-history.json");
    let clock = Arc::new(ManualClock::new(
        DateTime::parse_from_rfc3339("2026-11-01T00:00:00Z")
            .expect("time")
            .with_timezone(&Utc),
    ));
    let cap = events::capture();
    let v = start(root.path(), &history, clock.clone());
    create(&v, "uploads", Some("8M")).await;
    // 512 KiB an hour into an 8M quota: full in about 16 hours, well inside 7 days.
    for hour in 0..6 {
        std::fs::write(
            root.path().join(format!("uploads/h{hour}.bin")),
            vec![1u8; 512 << 10],
        )
        .expect("write");
        v.call(CheckThresholds).await.expect("usage tick");
        clock.advance(chrono::Duration::hours(1));
    }
    let info = v
        .call(InspectVolume {
            name: name("uploads"),
        })
        .await
        .expect("inspect");
    let Some(Forecast::Growing {
        quota_full_in_s, ..
    }) = info.forecast
    else {
        panic!("{:?}", info.forecast);
    };
    let hours = quota_full_in_s as f64 / 3600.0;
    assert!((4.0..=12.0).contains(&hours), "{hours} h");
    let filling = cap.named("volume.filling");
    assert_eq!(filling.len(), 1, "{:?}", cap.events());
    assert_eq!(filling[0].field("volume"), Some("uploads"));
    assert_eq!(filling[0].field("limit"), Some("quota"));
    // A flat volume next to it is not growing.
    assert_eq!(
        v.call(InspectVolume { name: name("logs") })
            .await
            .expect("inspect")
            .forecast,
        Some(Forecast::NotGrowing)
    );

    // Saved under the state directory (on the blocking pool, after each tick: wait for the
    // last save), and read again by the next actor.
    let saved_samples = || {
        std::fs::read(&history)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["volumes"]["uploads"].as_array().map(Vec::len))
    };
    for _ in 0..250 {
        if saved_samples() == Some(6) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(saved_samples(), Some(6));
    drop(v);
    let again = start(root.path(), &history, clock.clone());
    v_has_forecast(&again).await;
}

async fn v_has_forecast(v: &VolumeHandle) {
    v.call(CheckThresholds).await.expect("usage tick");
    let info = v
        .call(InspectVolume {
            name: name("uploads"),
        })
        .await
        .expect("inspect");
    assert!(
        matches!(info.forecast, Some(Forecast::Growing { .. })),
        "the samples were not read again: {:?}",
        info.forecast
    );
}
