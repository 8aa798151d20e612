//! Other servers' public signing keys, per shard: the seam through which
//! received PDUs find the keys their signatures need. Federation will fill
//! it by fetching `/_matrix/key/v2/server` (and notaries); tests fill it
//! directly. Our own key is always known.

use std::cell::RefCell;

use ruma::serde::Base64;
use ruma::signatures::PublicKeyMap;

use crate::events::ServerKey;

/// `server → key id → public key` (touched by one shard only).
#[derive(Debug, Default)]
pub struct RemoteKeys {
    keys: RefCell<PublicKeyMap>,
}

/// A public key that is not unpadded standard base64.
#[derive(Debug, thiserror::Error)]
#[error("bad public key: {0}")]
pub struct BadKey(String);

impl RemoteKeys {
    /// Remembers `server`'s key `key_id` (e.g. `ed25519:abc`), given as
    /// unpadded base64 as servers publish it.
    pub fn insert(&self, server: &str, key_id: &str, public_key: &str) -> Result<(), BadKey> {
        let key = Base64::parse(public_key).map_err(|e| BadKey(e.to_string()))?;
        self.keys
            .borrow_mut()
            .entry(server.to_owned())
            .or_default()
            .insert(key_id.to_owned(), key);
        Ok(())
    }

    /// Whether any key of `server` is known.
    pub fn knows(&self, server: &str) -> bool {
        self.keys.borrow().contains_key(server)
    }

    /// Every known key plus ours, as signature verification takes them.
    pub fn key_map(&self, own: &ServerKey) -> PublicKeyMap {
        let mut map = self.keys.borrow().clone();
        if let Ok(k) = Base64::parse(own.public_key_base64()) {
            map.entry(own.server_name.to_string())
                .or_default()
                .insert(own.key_id.to_string(), k);
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_key_is_always_known_and_bad_keys_are_refused() {
        let name = ruma::OwnedServerName::try_from("local.test").unwrap();
        let own = ServerKey::from_seed(name, "k", &[1; 32]).unwrap();
        let keys = RemoteKeys::default();
        assert!(keys
            .insert("remote.test", "ed25519:1", "not base64!")
            .is_err());
        let other = ServerKey::from_seed("remote.test".try_into().unwrap(), "1", &[2; 32]).unwrap();
        keys.insert(
            "remote.test",
            other.key_id.as_str(),
            &other.public_key_base64(),
        )
        .unwrap();
        assert!(keys.knows("remote.test"));
        let map = keys.key_map(&own);
        assert!(map["local.test"].contains_key(own.key_id.as_str()));
        assert_eq!(map["remote.test"].len(), 1);
    }
}
