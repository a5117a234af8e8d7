//! A candidate's exam client saving through the reference client: to the platform's cloud
//! first, to a box in the hall (trusted only by its pin: the cloud's relay list gives the
//! venue's, BOX_PIN adds boxes without a platform) when the cloud is gone, and back. Each save
//! is sealed on the laptop to the exam's keys before it is journaled.
//!
//! ```text
//! cargo run -p hallrelay-client --example autosave -- \
//!     CLOUD_URL EXAM CANDIDATE TOKEN_FILE JOURNAL_DIR [BOX_PIN ...] < answers.json
//! ```
//!
//! saves standard input once and says where it landed. A real exam client takes the same
//! values from its exam configuration and calls `save` every 15 s. Boxes are looked for over
//! mDNS on loopback only here (`lo`); in a hall, name the hall network's interface.

use std::io::Read as _;
use std::path::PathBuf;

use hallrelay_client::{Autosaver, CloudTrust, Discovery, Options};
use hallrelay_protocol::keys::Secret;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [cloud, exam, candidate, token_file, journal, pins @ ..] = args.as_slice() else {
        return Err(
            "usage: autosave CLOUD_URL EXAM CANDIDATE TOKEN_FILE JOURNAL_DIR [BOX_PIN ...]".into(),
        );
    };
    // The candidate's token, from a file only its user may read (mode 0600).
    let token = Secret::from_file(&PathBuf::from(token_file))?;
    let mut options = Options::new(cloud, exam, candidate, token, PathBuf::from(journal));
    // From the exam configuration, for boxes without a platform; the cloud's relay list
    // (below) adds the venue's enrolled boxes. No other box is ever saved to.
    options.box_pins = pins.to_vec();
    options.discovery = Discovery::mdns(vec!["lo".into()]);
    options.cloud_trust = CloudTrust::Roots { ca_file: None };

    let mut answers = Vec::new();
    std::io::stdin().read_to_end(&mut answers)?;
    // Every step is an event a client can show: "save 1 saved to the cloud at 10:32:15 UTC".
    let mut autosaver = Autosaver::open(options)?.on_event(|event| println!("{event}"));
    // The start of the exam, while the cloud answers: the exam's keys (every save is sealed
    // to them on this laptop: the platform and the candidate's restore code open it, no box
    // can) and the venue's boxes, both kept in the journal for the day the cloud is gone.
    autosaver.learn_keys().await?;
    autosaver.learn_relays().await;
    let saved = autosaver.save(&answers, false).await?;
    println!("landed: {:?}", saved.landed);
    Ok(())
}
