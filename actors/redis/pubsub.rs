//! Pub/Sub: publish on the shared connection; subscriptions on one dedicated subscriber
//! connection that the actor opens once something is subscribed and re-opens — resubscribing
//! every channel and pattern — after each reconnect (`pubsub.resubscribed`).
//!
//! Each subscription is a `Recipient<PubSubMessage>`: messages arrive as actor messages.
//! Delivery uses `try_send`, so a slow recipient's bounded mailbox is the only buffer: when
//! it is full the message is dropped and counted (`pubsub.overflow` once per subscription),
//! and memory never grows with a recipient that does not keep up. A recipient that has
//! stopped is unsubscribed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;

use actix::fut::{ActorFutureExt, WrapFuture};
use actix::prelude::*;
use futures_util::StreamExt;
use redis::aio::PubSubSink;
use serde::{Deserialize, Serialize};

use super::keys::check_id;
use super::sealed::Sealed;
use super::{Conn, RedisActor, RedisError, RedisHandle, RedisOp, Settings, Shared, query};
use crate::events::{self, PubSubOverflow, PubSubResubscribed, PubSubSubscribeFailed};
use crate::supervisor::DeadlineError;
use crate::supervisor::link::OpFuture;
use crate::supervisor::link::{self, LinkError};

// ---------------------------------------------------------------------------------------------
// Messages

/// What a subscription listens to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Topic {
    /// One channel, by exact name.
    Channel(String),
    /// Every channel matching a glob pattern (`PSUBSCRIBE`).
    Pattern(String),
}

impl Topic {
    fn check(&self) -> Result<(), RedisError> {
        match self {
            Topic::Channel(c) => check_id("channel", c),
            Topic::Pattern(p) => check_id("pattern", p),
        }
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topic::Channel(c) => write!(f, "channel {c}"),
            Topic::Pattern(p) => write!(f, "pattern {p}"),
        }
    }
}

/// A published message, delivered to a subscribed recipient.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct PubSubMessage {
    pub channel: String,
    /// The pattern that matched, for pattern subscriptions.
    pub pattern: Option<String>,
    pub payload: Vec<u8>,
}

/// Identifies one subscription, for [`Unsubscribe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SubscriptionId(pub u64);

/// Delivers every message on `topic` to `recipient` until unsubscribed, across reconnects.
/// While the subscriber connection is open the answer comes once Redis confirmed the
/// subscription (an error — `NOPERM` from an ACL, say — is the answer and nothing is kept);
/// while Redis is down it is accepted at once and takes effect when Redis is up.
#[derive(Message)]
#[rtype(result = "Result<SubscriptionId, RedisError>")]
pub struct Subscribe {
    pub topic: Topic,
    pub recipient: Recipient<PubSubMessage>,
}

/// Ends a subscription; answers whether it existed.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<bool, RedisError>")]
pub struct Unsubscribe {
    pub id: SubscriptionId,
}

/// Publishes `payload` on `channel`; answers how many subscribers Redis delivered it to.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<u64, RedisError>")]
pub struct Publish {
    pub channel: String,
    pub payload: Vec<u8>,
}

/// Messages dropped per subscription because its recipient's mailbox was full.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<Vec<(SubscriptionId, u64)>, RedisError>")]
pub struct PubSubDrops;

/// Stream item of the subscriber connection; `msg: None` marks its end.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Delivery {
    generation: u64,
    msg: Option<redis::Msg>,
}

// ---------------------------------------------------------------------------------------------
// State

/// One subscriber and what it listens to.
struct Subscription {
    topic: Topic,
    recipient: Recipient<PubSubMessage>,
    dropped: u64,
}

/// The subscriptions and the subscriber connection, part of the actor's state.
#[derive(Default)]
pub(crate) struct Subscriptions {
    next_id: u64,
    subs: BTreeMap<SubscriptionId, Subscription>,
    /// The subscriber connection's command half, while open.
    sink: Option<PubSubSink>,
    /// Its message stream in the actor's context (cancelled when the connection is lost).
    stream: Option<SpawnHandle>,
    /// Topics confirmed on the current subscriber connection.
    active: BTreeSet<Topic>,
    /// Bumped whenever the subscriber connection is opened or dropped.
    generation: u64,
    opening: bool,
    /// Whether a subscriber connection was open before (the next open is a resubscribe).
    opened_before: bool,
}

impl Subscriptions {
    fn topics(&self) -> BTreeSet<Topic> {
        self.subs.values().map(|s| s.topic.clone()).collect()
    }

    /// Forgets the subscriber connection (the main one was lost); the subscriptions stay.
    pub(crate) fn connection_lost(&mut self) -> Option<SpawnHandle> {
        self.sink = None;
        self.active.clear();
        self.generation += 1;
        self.opening = false;
        self.stream.take()
    }
}

// ---------------------------------------------------------------------------------------------
// Subscriber connection

impl RedisActor {
    /// Opens the subscriber connection and subscribes every topic, if there is anything to
    /// subscribe and the main connection is up.
    pub(crate) fn open_pubsub(&mut self, ctx: &mut Context<Self>) {
        let subs = &mut self.subscriptions;
        if subs.subs.is_empty() || subs.sink.is_some() || subs.opening || !self.link.machine.is_up()
        {
            return;
        }
        let Some(client) = self.client.clone() else {
            return;
        };
        subs.opening = true;
        let topics = subs.topics();
        let generation = self.link.generation;
        let deadline = self.shared.settings.deadline;
        let wanted = topics.clone();
        let open = async move {
            RedisError::within(deadline, async move {
                let (sink, stream) = client.get_async_pubsub().await?.split();
                subscribe_topics(sink.clone(), wanted, true).await?;
                Ok((sink, stream))
            })
            .await
        };
        ctx.spawn(open.into_actor(self).map(move |res, act, ctx| {
            if act.link.generation != generation {
                return;
            }
            act.subscriptions.opening = false;
            let (sink, stream) = match res {
                Ok(opened) => opened,
                Err(e) => return act.pubsub_failed(generation, &e, ctx),
            };
            let subs = &mut act.subscriptions;
            subs.generation += 1;
            let pubsub_generation = subs.generation;
            let end = futures_util::stream::once(async move {
                Delivery {
                    generation: pubsub_generation,
                    msg: None,
                }
            });
            let deliveries = stream
                .map(move |msg| Delivery {
                    generation: pubsub_generation,
                    msg: Some(msg),
                })
                .chain(end);
            subs.stream = Some(ctx.add_stream(deliveries));
            subs.sink = Some(sink);
            subs.active = topics.clone();
            if subs.opened_before {
                let (channels, patterns) = split_topics(&topics);
                events::emit(PubSubResubscribed {
                    channels: channels.len() as u64,
                    patterns: patterns.len() as u64,
                });
            }
            subs.opened_before = true;
            // Subscribed or unsubscribed while we were opening: catch up.
            act.sync_topics(ctx);
        }));
    }

    /// A subscriber-connection error: a lost connection is the backend's business (backoff
    /// and reconnect, which re-opens it); a refusal (an ACL without channel rights, say) is
    /// reported and leaves the main connection alone — the next reconnect tries again.
    fn pubsub_failed(&mut self, generation: u64, e: &RedisError, ctx: &mut Context<Self>) {
        if e.connection_lost() {
            link::on_failure(self, generation, e, ctx);
        } else {
            events::emit(PubSubSubscribeFailed {
                code: e.code(),
                error: e.to_string(),
            });
            self.drop_pubsub(ctx);
        }
    }

    /// Forgets the subscriber connection (the subscriptions stay).
    fn drop_pubsub(&mut self, ctx: &mut Context<Self>) {
        if let Some(stream) = self.subscriptions.connection_lost() {
            ctx.cancel_future(stream);
        }
    }

    /// Brings the open subscriber connection in line with the subscriptions: subscribes
    /// topics someone wants, unsubscribes topics nobody wants any more.
    fn sync_topics(&mut self, ctx: &mut Context<Self>) {
        let subs = &mut self.subscriptions;
        let Some(sink) = subs.sink.clone() else {
            return;
        };
        let wanted = subs.topics();
        let (missing, stale) = topic_changes(&wanted, &subs.active);
        if missing.is_empty() && stale.is_empty() {
            return;
        }
        subs.active = wanted;
        let generation = self.link.generation;
        let deadline = self.shared.settings.deadline;
        let sync = async move {
            RedisError::within(deadline, async move {
                subscribe_topics(sink.clone(), stale, false).await?;
                subscribe_topics(sink, missing, true).await
            })
            .await
        };
        ctx.spawn(sync.into_actor(self).map(move |res, act, ctx| {
            if let Err(e) = res {
                act.pubsub_failed(generation, &e, ctx);
            }
        }));
    }
}

/// What the subscriber connection must subscribe (`wanted`, not yet `active`) and
/// unsubscribe (`active`, no longer `wanted`).
fn topic_changes(
    wanted: &BTreeSet<Topic>,
    active: &BTreeSet<Topic>,
) -> (BTreeSet<Topic>, BTreeSet<Topic>) {
    (
        wanted.difference(active).cloned().collect(),
        active.difference(wanted).cloned().collect(),
    )
}

/// Whether a subscription to `topic` gets a message on `channel`, delivered through
/// `pattern` (a `PSUBSCRIBE` match) or not: a channel subscription gets the channel's own
/// messages, a pattern subscription those its pattern matched — never both for one message.
fn listens(topic: &Topic, channel: &str, pattern: Option<&str>) -> bool {
    match (topic, pattern) {
        (Topic::Channel(c), None) => c == channel,
        (Topic::Pattern(p), Some(matched)) => p == matched,
        _ => false,
    }
}

/// The channel names and the patterns of `topics`, for `SUBSCRIBE` and `PSUBSCRIBE`.
fn split_topics(topics: &BTreeSet<Topic>) -> (Vec<String>, Vec<String>) {
    let mut channels = Vec::new();
    let mut patterns = Vec::new();
    for t in topics {
        match t {
            Topic::Channel(c) => channels.push(c.clone()),
            Topic::Pattern(p) => patterns.push(p.clone()),
        }
    }
    (channels, patterns)
}

/// SUBSCRIBE/PSUBSCRIBE (`on`) or UNSUBSCRIBE/PUNSUBSCRIBE every topic, awaiting Redis's
/// confirmations.
async fn subscribe_topics(
    mut sink: PubSubSink,
    topics: BTreeSet<Topic>,
    on: bool,
) -> Result<(), RedisError> {
    let (channels, patterns) = split_topics(&topics);
    match (on, channels.is_empty()) {
        (true, false) => sink.subscribe(channels).await?,
        (false, false) => sink.unsubscribe(channels).await?,
        _ => {}
    }
    match (on, patterns.is_empty()) {
        (true, false) => sink.psubscribe(patterns).await?,
        (false, false) => sink.punsubscribe(patterns).await?,
        _ => {}
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Handlers

impl Handler<Subscribe> for RedisActor {
    type Result = ResponseActFuture<Self, Result<SubscriptionId, RedisError>>;

    fn handle(&mut self, msg: Subscribe, ctx: &mut Context<Self>) -> Self::Result {
        if let Err(e) = msg.topic.check() {
            return Box::pin(actix::fut::ready(Err(e)));
        }
        let subs = &mut self.subscriptions;
        subs.next_id += 1;
        let id = SubscriptionId(subs.next_id);
        let topic = msg.topic.clone();
        subs.subs.insert(
            id,
            Subscription {
                topic: msg.topic,
                recipient: msg.recipient,
                dropped: 0,
            },
        );
        // Not open yet (or Redis down): it takes effect when the connection opens.
        let Some(sink) = subs.sink.clone() else {
            self.open_pubsub(ctx);
            return Box::pin(actix::fut::ready(Ok(id)));
        };
        if !subs.active.insert(topic.clone()) {
            return Box::pin(actix::fut::ready(Ok(id)));
        }
        // Answer once Redis confirmed, so the caller knows delivery has started.
        let generation = self.link.generation;
        let deadline = self.shared.settings.deadline;
        let wanted = BTreeSet::from([topic.clone()]);
        let confirm = RedisError::within(deadline, subscribe_topics(sink, wanted, true));
        Box::pin(
            confirm
                .into_actor(self)
                .map(move |res, act, ctx| match res {
                    Ok(()) => Ok(id),
                    Err(e) if e.connection_lost() => {
                        // Kept: resubscribed with everything else after the reconnect.
                        link::on_failure(act, generation, &e, ctx);
                        Ok(id)
                    }
                    Err(e) => {
                        act.subscriptions.subs.remove(&id);
                        act.subscriptions.active.remove(&topic);
                        act.sync_topics(ctx);
                        Err(e)
                    }
                }),
        )
    }
}

impl Handler<Unsubscribe> for RedisActor {
    type Result = Result<bool, RedisError>;

    fn handle(&mut self, msg: Unsubscribe, ctx: &mut Context<Self>) -> Self::Result {
        if self.subscriptions.subs.remove(&msg.id).is_none() {
            return Ok(false);
        }
        // Best effort: a message for a topic nobody wants is simply not delivered.
        self.sync_topics(ctx);
        Ok(true)
    }
}

impl Publish {
    /// `PUBLISH channel payload`; refused for a bad channel name or a payload above
    /// `redis.max_value_bytes`.
    fn command(self, settings: &Settings) -> Result<redis::Cmd, RedisError> {
        check_id("channel", &self.channel)?;
        settings.check_value_size(self.payload.len())?;
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(self.channel).arg(self.payload);
        Ok(cmd)
    }
}

impl Sealed for Publish {}

impl RedisOp for Publish {
    type Output = u64;

    fn start(self, conn: Conn, shared: &Shared) -> Result<impl OpFuture<Self>, RedisError> {
        Ok(query(self.command(shared.settings())?, conn))
    }
}

impl StreamHandler<Delivery> for RedisActor {
    fn handle(&mut self, item: Delivery, ctx: &mut Context<Self>) {
        let subs = &mut self.subscriptions;
        if item.generation != subs.generation {
            return;
        }
        let Some(msg) = item.msg else {
            // The subscriber connection ended on its own (CLIENT KILL, say): open a new one
            // after a probe interval, never in a tight loop; if Redis is down, the reconnect
            // opens it once Redis is back.
            subs.sink = None;
            subs.stream = None;
            subs.active.clear();
            ctx.run_later(self.shared.settings.probe_interval, |act, ctx| {
                act.open_pubsub(ctx)
            });
            return;
        };
        let channel = msg.get_channel_name().to_owned();
        let pattern: Option<String> = if msg.from_pattern() {
            msg.get_pattern().ok()
        } else {
            None
        };
        let mut closed = Vec::new();
        for (id, sub) in subs.subs.iter_mut() {
            if !listens(&sub.topic, &channel, pattern.as_deref()) {
                continue;
            }
            let delivery = PubSubMessage {
                channel: channel.clone(),
                pattern: pattern.clone(),
                payload: msg.get_payload_bytes().to_vec(),
            };
            match sub.recipient.try_send(delivery) {
                Ok(()) => {}
                Err(SendError::Full(_)) => {
                    sub.dropped += 1;
                    if sub.dropped == 1 {
                        events::emit(PubSubOverflow {
                            topic: sub.topic.to_string(),
                        });
                    }
                }
                Err(SendError::Closed(_)) => closed.push(*id),
            }
        }
        if !closed.is_empty() {
            for id in closed {
                subs.subs.remove(&id);
            }
            self.sync_topics(ctx);
        }
    }

    /// The end of a stream is a `Delivery` without a message; the actor itself never stops
    /// because a stream ended (the default would stop it).
    fn finished(&mut self, _: &mut Context<Self>) {}
}

// ---------------------------------------------------------------------------------------------
// Typed helpers and counters

impl Handler<PubSubDrops> for RedisActor {
    type Result = Result<Vec<(SubscriptionId, u64)>, RedisError>;

    fn handle(&mut self, _: PubSubDrops, _: &mut Context<Self>) -> Self::Result {
        Ok(self
            .subscriptions
            .subs
            .iter()
            .map(|(id, s)| (*id, s.dropped))
            .collect())
    }
}

impl RedisHandle {
    pub fn publish(
        &self,
        channel: &str,
        payload: impl Into<Vec<u8>>,
    ) -> impl Future<Output = Result<u64, RedisError>> + '_ {
        self.call(Publish {
            channel: channel.to_owned(),
            payload: payload.into(),
        })
    }

    pub async fn subscribe(
        &self,
        topic: Topic,
        recipient: Recipient<PubSubMessage>,
    ) -> Result<SubscriptionId, RedisError> {
        self.send(Subscribe { topic, recipient }).await
    }

    pub async fn unsubscribe(&self, id: SubscriptionId) -> Result<bool, RedisError> {
        self.send(Unsubscribe { id }).await
    }

    /// Dropped-message counts per subscription.
    pub async fn pubsub_drops(&self) -> Result<Vec<(SubscriptionId, u64)>, RedisError> {
        self.send(PubSubDrops).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::tests::{args, settings};

    fn channel(c: &str) -> Topic {
        Topic::Channel(c.to_owned())
    }

    fn pattern(p: &str) -> Topic {
        Topic::Pattern(p.to_owned())
    }

    #[test]
    fn publish_sends_the_channel_and_payload_as_given_and_checks_them() {
        let s = settings();
        let publish = |c: &str, payload: &[u8]| {
            Publish {
                channel: c.to_owned(),
                payload: payload.to_vec(),
            }
            .command(&s)
        };
        let cmd = publish("lucid:blocks:new", b"block-1").expect("valid");
        assert_eq!(args(&cmd), ["PUBLISH", "lucid:blocks:new", "block-1"]);
        assert!(matches!(
            publish("two words", b"x"),
            Err(RedisError::Invalid {
                field: "channel",
                ..
            })
        ));
        assert!(matches!(
            publish("c", &vec![0; s.max_value_bytes + 1]),
            Err(RedisError::Invalid { field: "value", .. })
        ));
    }

    #[test]
    fn topics_are_checked_and_split_for_subscribe_and_psubscribe() {
        assert!(channel("lucid:blocks:new").check().is_ok());
        assert!(pattern("lucid:alerts:*").check().is_ok());
        assert!(matches!(
            channel("").check(),
            Err(RedisError::Invalid {
                field: "channel",
                ..
            })
        ));
        assert!(matches!(
            pattern("a\nb").check(),
            Err(RedisError::Invalid {
                field: "pattern",
                ..
            })
        ));
        let topics = BTreeSet::from([channel("b"), pattern("p:*"), channel("a")]);
        assert_eq!(
            split_topics(&topics),
            (vec!["a".to_owned(), "b".to_owned()], vec!["p:*".to_owned()])
        );
    }

    /// Bringing the subscriber connection in line: subscribe what is wanted and not active,
    /// unsubscribe what is active and no longer wanted, leave the rest alone.
    #[test]
    fn topic_changes_subscribe_the_missing_and_drop_the_stale() {
        let wanted = BTreeSet::from([channel("a"), pattern("p:*"), channel("new")]);
        let active = BTreeSet::from([channel("a"), pattern("p:*"), channel("old")]);
        assert_eq!(
            topic_changes(&wanted, &active),
            (
                BTreeSet::from([channel("new")]),
                BTreeSet::from([channel("old")])
            )
        );
        assert_eq!(
            topic_changes(&wanted, &wanted),
            (BTreeSet::new(), BTreeSet::new())
        );
    }

    /// A message that matched a pattern reaches the pattern's subscribers only, a plain one
    /// the channel's only: one subscriber of both gets it once per way it was sent.
    #[test]
    fn a_message_reaches_the_subscriptions_it_was_sent_for() {
        let table = [
            (channel("lucid:x"), "lucid:x", None, true),
            (channel("lucid:x"), "lucid:y", None, false),
            (channel("lucid:x"), "lucid:x", Some("lucid:*"), false),
            (pattern("lucid:*"), "lucid:x", Some("lucid:*"), true),
            (pattern("lucid:*"), "lucid:x", Some("other:*"), false),
            (pattern("lucid:*"), "lucid:x", None, false),
        ];
        for (topic, ch, matched, want) in table {
            assert_eq!(
                listens(&topic, ch, matched),
                want,
                "{topic} {ch} {matched:?}"
            );
        }
    }
}
