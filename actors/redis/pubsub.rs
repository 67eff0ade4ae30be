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
use redis::AsyncCommands;
use redis::aio::PubSubSink;
use serde::{Deserialize, Serialize};

use super::keys::check_id;
use redis::aio::MultiplexedConnection;

use super::sealed::Sealed;
use super::{RedisActor, RedisError, RedisHandle, RedisOp, Shared, with_deadline};
use crate::events::{self, PubSubOverflow, PubSubResubscribed};

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
/// Accepted also while Redis is down: it takes effect once Redis is up.
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

/// Stream item of the subscriber connection; `msg: None` marks its end.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Delivery {
    generation: u64,
    msg: Option<redis::Msg>,
}

// ---------------------------------------------------------------------------------------------
// State

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
        if subs.subs.is_empty() || subs.sink.is_some() || subs.opening || !self.machine.is_up() {
            return;
        }
        let Some(client) = self.client.clone() else {
            return;
        };
        subs.opening = true;
        let topics = subs.topics();
        let generation = self.generation;
        let deadline = self.shared.settings.deadline;
        let wanted = topics.clone();
        let open = async move {
            with_deadline(deadline, async move {
                let (mut sink, stream) = client.get_async_pubsub().await?.split();
                let (channels, patterns) = split_topics(&wanted);
                if !channels.is_empty() {
                    sink.subscribe(channels).await?;
                }
                if !patterns.is_empty() {
                    sink.psubscribe(patterns).await?;
                }
                Ok((sink, stream))
            })
            .await
        };
        ctx.spawn(open.into_actor(self).map(move |res, act, ctx| {
            if act.generation != generation {
                return;
            }
            act.subscriptions.opening = false;
            let (sink, stream) = match res {
                Ok(opened) => opened,
                Err(e) => return act.on_failure(generation, &e, ctx),
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
            // Subscribed while we were opening: catch up.
            act.subscribe_missing(ctx);
        }));
    }

    /// Subscribes topics that have subscribers but are not active on the open connection.
    fn subscribe_missing(&mut self, ctx: &mut Context<Self>) {
        let subs = &mut self.subscriptions;
        let Some(sink) = subs.sink.clone() else {
            return;
        };
        let missing: BTreeSet<Topic> = subs.topics().difference(&subs.active).cloned().collect();
        if missing.is_empty() {
            return;
        }
        subs.active.extend(missing.iter().cloned());
        let generation = self.generation;
        let deadline = self.shared.settings.deadline;
        ctx.spawn(
            subscribe_topics(sink, missing, deadline)
                .into_actor(self)
                .map(move |res, act, ctx| {
                    if let Err(e) = res {
                        act.on_failure(generation, &e, ctx);
                    }
                }),
        );
    }
}

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

async fn subscribe_topics(
    mut sink: PubSubSink,
    topics: BTreeSet<Topic>,
    deadline: std::time::Duration,
) -> Result<(), RedisError> {
    with_deadline(deadline, async move {
        let (channels, patterns) = split_topics(&topics);
        if !channels.is_empty() {
            sink.subscribe(channels).await?;
        }
        if !patterns.is_empty() {
            sink.psubscribe(patterns).await?;
        }
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Handlers

impl Handler<Subscribe> for RedisActor {
    type Result = Result<SubscriptionId, RedisError>;

    fn handle(&mut self, msg: Subscribe, ctx: &mut Context<Self>) -> Self::Result {
        msg.topic.check()?;
        let subs = &mut self.subscriptions;
        subs.next_id += 1;
        let id = SubscriptionId(subs.next_id);
        subs.subs.insert(
            id,
            Subscription {
                topic: msg.topic,
                recipient: msg.recipient,
                dropped: 0,
            },
        );
        if subs.sink.is_some() {
            self.subscribe_missing(ctx);
        } else {
            self.open_pubsub(ctx);
        }
        Ok(id)
    }
}

impl Handler<Unsubscribe> for RedisActor {
    type Result = Result<bool, RedisError>;

    fn handle(&mut self, msg: Unsubscribe, ctx: &mut Context<Self>) -> Self::Result {
        let subs = &mut self.subscriptions;
        let Some(gone) = subs.subs.remove(&msg.id) else {
            return Ok(false);
        };
        let still_wanted = subs.subs.values().any(|s| s.topic == gone.topic);
        if !still_wanted
            && subs.active.remove(&gone.topic)
            && let Some(mut sink) = subs.sink.clone()
        {
            let deadline = self.shared.settings.deadline;
            // Best effort: a message for a topic nobody wants is simply not delivered.
            ctx.spawn(
                async move {
                    let _ = with_deadline(deadline, async move {
                        match gone.topic {
                            Topic::Channel(c) => sink.unsubscribe(c).await?,
                            Topic::Pattern(p) => sink.punsubscribe(p).await?,
                        }
                        Ok(())
                    })
                    .await;
                }
                .into_actor(self),
            );
        }
        Ok(true)
    }
}

impl Sealed for Publish {}

impl RedisOp for Publish {
    type Output = u64;

    fn start(
        self,
        mut conn: MultiplexedConnection,
        shared: &Shared,
    ) -> Result<impl Future<Output = Result<u64, RedisError>> + 'static, RedisError> {
        check_id("channel", &self.channel)?;
        shared.settings().check_value_size(self.payload.len())?;
        Ok(async move { Ok(conn.publish(self.channel, self.payload).await?) })
    }
}

impl StreamHandler<Delivery> for RedisActor {
    fn handle(&mut self, item: Delivery, ctx: &mut Context<Self>) {
        let subs = &mut self.subscriptions;
        if item.generation != subs.generation {
            return;
        }
        let Some(msg) = item.msg else {
            // The subscriber connection ended on its own: open a new one (if Redis is down,
            // the reconnect does that once it is back).
            subs.sink = None;
            subs.stream = None;
            subs.active.clear();
            self.open_pubsub(ctx);
            return;
        };
        let channel = msg.get_channel_name().to_owned();
        let pattern: Option<String> = msg.get_pattern().ok();
        let mut closed = Vec::new();
        for (id, sub) in subs.subs.iter_mut() {
            let matches = match (&sub.topic, &pattern) {
                (Topic::Channel(c), None) => *c == channel,
                (Topic::Pattern(p), Some(matched)) => p == matched,
                _ => false,
            };
            if !matches {
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
        for id in closed {
            subs.subs.remove(&id);
        }
    }

    /// The end of a stream is a `Delivery` without a message; the actor itself never stops
    /// because a stream ended (the default would stop it).
    fn finished(&mut self, _: &mut Context<Self>) {}
}

// ---------------------------------------------------------------------------------------------
// Typed helpers and counters

/// Messages dropped per subscription because its recipient's mailbox was full.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<Vec<(SubscriptionId, u64)>, RedisError>")]
pub struct PubSubDrops;

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
