//! Typed documents for the collections Lucid reads most: users, sessions, blocks and
//! transactions. Each is a serde struct tied to its collection by [`Record`]; the handle's
//! typed helpers encode it, run it through the same schema checks as a raw document, and
//! decode what comes back. The other collections use raw [`Document`]s.
//!
//! References between records are strings (`user_id`), not ObjectIds: they survive every
//! server, index and export the same way.

use mongodb::bson::{self, DateTime, Document, doc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::collections::Collection;
use super::crud::{FindOne, InsertOne, ReplaceOne, UpdateSummary};
use super::{MongoError, MongoHandle};

/// A typed document of one collection, found by its unique `key_field`.
pub trait Record: Serialize + DeserializeOwned + Send + 'static {
    const COLLECTION: Collection;
    /// The field of its unique id (`user_id`, `session_id`, `height`, `tx_id`).
    const KEY_FIELD: &'static str;
    /// This record's id, as stored.
    fn key(&self) -> bson::Bson;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserRole {
    User,
    Admin,
    Operator,
    Node,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserStatus {
    Active,
    Suspended,
    Deleted,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub user_id: String,
    pub email: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wallet_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    pub role: UserRole,
    pub status: UserStatus,
    pub created_at: DateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<DateTime>,
}

impl Record for User {
    const COLLECTION: Collection = Collection::Users;
    const KEY_FIELD: &'static str = "user_id";
    fn key(&self) -> bson::Bson {
        self.user_id.clone().into()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionStatus {
    Active,
    Completed,
    Failed,
    Expired,
}

/// A Lucid session (a storage session of a node), not the Redis login session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub session_id: String,
    pub user_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    pub status: SessionStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_count: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_bytes: Option<i64>,
    pub created_at: DateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime>,
}

impl Record for SessionRecord {
    const COLLECTION: Collection = Collection::Sessions;
    const KEY_FIELD: &'static str = "session_id";
    fn key(&self) -> bson::Bson {
        self.session_id.clone().into()
    }
}

/// A block of the lucid_blocks chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Block {
    pub height: i64,
    pub hash: String,
    pub previous_hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merkle_root: Option<String>,
    pub timestamp: DateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction_count: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub producer: Option<String>,
}

impl Record for Block {
    const COLLECTION: Collection = Collection::Blocks;
    const KEY_FIELD: &'static str = "height";
    fn key(&self) -> bson::Bson {
        self.height.into()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransactionStatus {
    Pending,
    Confirmed,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transaction {
    pub tx_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_height: Option<i64>,
    pub from: String,
    pub to: String,
    pub amount: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fee: Option<i64>,
    pub status: TransactionStatus,
    pub created_at: DateTime,
}

impl Record for Transaction {
    const COLLECTION: Collection = Collection::Transactions;
    const KEY_FIELD: &'static str = "tx_id";
    fn key(&self) -> bson::Bson {
        self.tx_id.clone().into()
    }
}

fn encode<T: Record>(record: &T) -> Result<Document, MongoError> {
    bson::to_document(record).map_err(|e| MongoError::Codec {
        message: e.to_string(),
    })
}

fn decode<T: Record>(mut doc: Document) -> Result<T, MongoError> {
    doc.remove("_id");
    bson::from_document(doc).map_err(|e| MongoError::Codec {
        message: e.to_string(),
    })
}

impl MongoHandle {
    /// Inserts a typed record (schema-checked like any document).
    pub async fn insert_record<T: Record>(&self, record: &T) -> Result<(), MongoError> {
        self.call(InsertOne {
            collection: T::COLLECTION,
            document: encode(record)?,
        })
        .await
        .map(drop)
    }

    /// The record with this key, if any.
    pub async fn get_record<T: Record>(
        &self,
        key: impl Into<bson::Bson>,
    ) -> Result<Option<T>, MongoError> {
        let found = self
            .call(FindOne {
                collection: T::COLLECTION,
                filter: doc! {T::KEY_FIELD: key.into()},
                projection: None,
            })
            .await?;
        found.map(decode).transpose()
    }

    /// The first record matching `filter`.
    pub async fn find_record<T: Record>(&self, filter: Document) -> Result<Option<T>, MongoError> {
        let found = self
            .call(FindOne {
                collection: T::COLLECTION,
                filter,
                projection: None,
            })
            .await?;
        found.map(decode).transpose()
    }

    /// Writes the whole record over the stored one with the same key (inserting it if there
    /// is none).
    pub async fn save_record<T: Record>(&self, record: &T) -> Result<UpdateSummary, MongoError> {
        self.call(ReplaceOne {
            collection: T::COLLECTION,
            filter: doc! {T::KEY_FIELD: record.key()},
            replacement: encode(record)?,
            upsert: true,
        })
        .await
    }
}
