//! Who may do what, with real boxes and the real reference cloud: platform tokens are good on
//! every box of their venue and nowhere else, a box-scoped token on its box alone, a box's local
//! key on that box alone, and the cloud trusts no box's key.

use hallrelay_testkit as common;

use common::*;
use hallrelay_protocol::token::{self, Claims};
use http::StatusCode;

const EXAM: &str = "math";

/// A platform, and a box of venue `venue` that trusts its public keys.
fn box_of_venue(dir: &std::path::Path, platform: &Platform, venue: &str) -> BoxProcess {
    let keys = platform.write_keys_file(&dir.join("keys.json"));
    let config = config_file(dir, &format!("venue = \"{venue}\"\n"));
    BoxProcess::start(
        &dir.join("data"),
        &[
            "--config",
            config.to_str().unwrap(),
            "--platform-keys-file",
            &keys,
        ],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn platform_tokens_open_the_boxes_of_their_venue_only() {
    let dir = tempfile::tempdir().unwrap();
    let platform = Platform::create(&dir.path().join("platform.key"));
    let north_dir = dir.path().join("north");
    std::fs::create_dir(&north_dir).unwrap();
    let north = box_of_venue(&north_dir, &platform, "hall-north");

    // The venue's candidate token saves; another venue's is refused, saying why.
    let mine = platform.candidate_token("hall-north", EXAM, "c1");
    let reply = put(&north.client(Some(mine)), EXAM, "c1", 1, b"answer").await;
    assert_eq!(reply.status, StatusCode::CREATED);
    let theirs = platform.candidate_token("hall-south", EXAM, "c1");
    let reply = put(&north.client(Some(theirs)), EXAM, "c1", 2, b"answer").await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    let message = reply.message().unwrap_or_default();
    assert!(
        message.contains("\"hall-south\"") && message.contains("\"hall-north\""),
        "{message}"
    );

    // An admin token for one box opens that box, not its neighbour of the same venue.
    let south_dir = dir.path().join("second");
    std::fs::create_dir(&south_dir).unwrap();
    let second = box_of_venue(&south_dir, &platform, "hall-north");
    let now = common::now();
    let for_north = token::mint(
        &platform.key(),
        &Claims::admin("hall-north", "it", now, 600).on_box(&north.pin),
    );
    let status = |b: &BoxProcess, t: &str| {
        let client = b.client(Some(t.to_owned()));
        async move { client.get("/v1/status").await.unwrap() }
    };
    assert_eq!(status(&north, &for_north).await.status, StatusCode::OK);
    let refused = status(&second, &for_north).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert!(
        refused
            .message()
            .unwrap_or_default()
            .contains("another box"),
        "{:?}",
        refused.message()
    );
    // The venue's admin token opens both; another venue's neither.
    let venue_admin = platform.admin_token("hall-north");
    assert_eq!(status(&second, &venue_admin).await.status, StatusCode::OK);
    let other_venue = platform.admin_token("hall-south");
    assert_eq!(
        status(&north, &other_venue).await.status,
        StatusCode::UNAUTHORIZED
    );

    // A token from a key the box never heard of names the key it lacks.
    let stranger = token::mint(
        &hallrelay_protocol::keys::TokenKey::generate(),
        &Claims::candidate("hall-north", EXAM, "c1", now, 600),
    );
    let reply = put(&north.client(Some(stranger.clone())), EXAM, "c1", 3, b"x").await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    let kid = token::key_id(&stranger).unwrap();
    assert!(
        reply.message().unwrap_or_default().contains(&kid),
        "{:?}",
        reply.message()
    );
}

/// A box's local key mints for that box alone: a second box refuses its tokens, even one that
/// copied the same key file, because a local token names its box's pin; and the cloud trusts
/// no box's key at all. Neither does the box's own local key stand in for the platform's.
#[tokio::test(flavor = "multi_thread")]
async fn a_local_token_is_good_on_its_box_alone() {
    let dir = tempfile::tempdir().unwrap();
    let first = BoxProcess::start(&dir.path().join("first"), &[]);
    let local = first.candidate_token(EXAM, "c1");
    let reply = put(&first.client(Some(local.clone())), EXAM, "c1", 1, b"a").await;
    assert_eq!(reply.status, StatusCode::CREATED);

    // A second box with a copy of the first one's local key.
    let second_dir = dir.path().join("second");
    std::fs::create_dir(&second_dir).unwrap();
    let copied = second_dir.join("venue.key");
    std::fs::copy(dir.path().join("first/venue.key"), &copied).unwrap();
    let second = BoxProcess::start(&second_dir, &["--venue-key-file", copied.to_str().unwrap()]);
    let reply = put(&second.client(Some(local.clone())), EXAM, "c1", 1, b"a").await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);

    // A token signed with the local key that names no box is refused by its own box too:
    // the local key cannot pass for the platform's.
    let unscoped = token::mint(
        &first.local_key(),
        &Claims::candidate(DEFAULT_VENUE, EXAM, "c1", common::now(), 600),
    );
    let reply = put(&first.client(Some(unscoped.clone())), EXAM, "c1", 2, b"b").await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);

    // The cloud takes neither.
    let listen = format!("127.0.0.1:{}", free_port());
    let cloud = BoxProcess::start_cloud(&dir.path().join("cloud"), &["--listen", &listen]);
    for t in [local, unscoped, first.admin_token()] {
        let at_cloud = hallrelay_client::Connection::pinned(
            &format!("http://{}", cloud.addr),
            vec![],
            Some(hallrelay_protocol::keys::Secret::new(t)),
        )
        .unwrap();
        let reply = put(&at_cloud, EXAM, "c1", 1, b"a").await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    }
    // While the platform's own token is taken there.
    let platform = cloud.platform().candidate_token(DEFAULT_VENUE, EXAM, "c1");
    let at_cloud = hallrelay_client::Connection::pinned(
        &format!("http://{}", cloud.addr),
        vec![],
        Some(hallrelay_protocol::keys::Secret::new(platform)),
    )
    .unwrap();
    assert_eq!(
        put(&at_cloud, EXAM, "c1", 1, b"a").await.status,
        StatusCode::CREATED
    );
}
