//! The object tables: the in-memory view of every container and VM, written through to
//! the store before anything is acknowledged, with waiters woken on every change. One
//! generic [`Table`] serves every kind of object; per-object op locks ([`OpLocks`])
//! keep two lifecycle actions on one object from interleaving.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use micro_os_core::{Container, Vm};
use micro_os_store::{Durability, Event, Store};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::broadcast;

use super::error::{Error, Result};

/// A kind of object the daemon keeps.
pub trait Object: Clone + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Its kind in the store and in messages ("container", "vm").
    const KIND: &'static str;
    fn id(&self) -> &str;
    fn name(&self) -> &str;
    fn created_at(&self) -> DateTime<Utc>;
}

/// Both kinds keep their name in the spec.
macro_rules! object {
    ($t:ty, $kind:literal) => {
        impl Object for $t {
            const KIND: &'static str = $kind;
            fn id(&self) -> &str {
                &self.id
            }
            fn name(&self) -> &str {
                &self.spec.name
            }
            fn created_at(&self) -> DateTime<Utc> {
                self.created_at
            }
        }
    };
}

object!(Container, "container");
object!(Vm, "vm");

pub struct Table<T> {
    map: RwLock<HashMap<String, T>>,
    store: Arc<Store>,
    /// Ids of objects whose state changed; waiters re-check on each.
    changes: broadcast::Sender<String>,
    /// Persists of one table go one at a time, so they cannot reorder.
    persist_lock: Mutex<()>,
}

/// The shortest id prefix `Table::find` takes.
const MIN_PREFIX: usize = 6;

impl<T: Object> Table<T> {
    /// The table as the store holds it.
    pub fn load(store: Arc<Store>, changes: broadcast::Sender<String>) -> Result<Table<T>> {
        let map = store.list::<T>(T::KIND)?.into_iter().map(|o| (o.id().to_string(), o)).collect();
        Ok(Table { map: RwLock::new(map), store, changes, persist_lock: Mutex::new(()) })
    }

    /// Finds an object by id, name, or a prefix of its id that names one object (at least
    /// `MIN_PREFIX` characters: what list tables show), as Docker and Podman do.
    pub fn find(&self, key: &str) -> Result<T> {
        let map = self.map.read().unwrap();
        if let Some(o) = map.get(key) {
            return Ok(o.clone());
        }
        if let Some(o) = map.values().find(|o| o.name() == key) {
            return Ok(o.clone());
        }
        if key.len() >= MIN_PREFIX {
            let mut hits = map.values().filter(|o| o.id().starts_with(key));
            match (hits.next(), hits.next()) {
                (Some(o), None) => return Ok(o.clone()),
                (Some(_), Some(_)) => {
                    return Err(Error::invalid(format!(
                        "{} id prefix {key:?} names more than one (give more of the id, or the name)",
                        T::KIND
                    )))
                }
                _ => {}
            }
        }
        Err(Error::not_found(format!("{} {key:?} not found (see `micro-os {} list`)", T::KIND, T::KIND)))
    }

    pub fn get(&self, id: &str) -> Option<T> {
        self.map.read().unwrap().get(id).cloned()
    }

    /// Reads one object in place, without cloning it.
    pub fn read<R>(&self, id: &str, f: impl FnOnce(&T) -> R) -> Option<R> {
        self.map.read().unwrap().get(id).map(f)
    }

    /// Every object, oldest first (then by name).
    pub fn list(&self) -> Vec<T> {
        let mut v: Vec<T> = self.map.read().unwrap().values().cloned().collect();
        v.sort_by(|a, b| a.created_at().cmp(&b.created_at()).then(a.name().cmp(b.name())));
        v
    }

    pub fn filter(&self, keep: impl Fn(&T) -> bool) -> Vec<T> {
        self.map.read().unwrap().values().filter(|o| keep(o)).cloned().collect()
    }

    pub fn any(&self, f: impl Fn(&T) -> bool) -> bool {
        self.map.read().unwrap().values().any(f)
    }

    pub fn len(&self) -> usize {
        self.map.read().unwrap().len()
    }

    pub fn check_name_free(&self, name: &str) -> Result<()> {
        if self.any(|o| o.name() == name) {
            return Err(Error::conflict(format!(
                "{} {name:?} already exists (pick another name or remove it first)",
                T::KIND
            )));
        }
        Ok(())
    }

    /// Changes an object in memory; `persist` writes it.
    pub fn update(&self, id: &str, f: impl FnOnce(&mut T)) -> Option<T> {
        let mut map = self.map.write().unwrap();
        let o = map.get_mut(id)?;
        f(o);
        Some(o.clone())
    }

    /// Writes the current in-memory object and an event to the store, fsynced
    /// ([`Durability::Synced`]): for every change a request asks for and the API then
    /// acknowledges (started, stopping, paused, configured ...). Always writes the latest
    /// state, under one lock, so concurrent persists cannot reorder.
    pub fn persist(&self, id: &str, action: &str, detail: impl Into<String>) -> Result<()> {
        self.write(id, action, detail.into(), Durability::Synced)
    }

    /// Like [`Table::persist`], committed but not fsynced ([`Durability::Committed`]): for
    /// what the daemon observes on its own and would observe again after a power cut —
    /// an exit (the shim keeps it in `status.json`; a container whose shim is gone is
    /// recorded as ended at the next start), a health change (probed again), a re-adoption.
    /// It survives a `kill -9` of the daemon. A request that acknowledges such a fact as
    /// done (a stop) calls [`Table::sync`] first.
    pub fn record(&self, id: &str, action: &str, detail: impl Into<String>) -> Result<()> {
        self.write(id, action, detail.into(), Durability::Committed)
    }

    fn write(&self, id: &str, action: &str, detail: String, durability: Durability) -> Result<()> {
        tokio::task::block_in_place(|| {
            let _g = self.persist_lock.lock().unwrap();
            let Some(o) = self.get(id) else { return Ok(()) };
            let ev = Event::new(T::KIND, id, o.name(), action, detail);
            self.store.update_with(T::KIND, id, o.name(), &o, Some(&ev), durability)
        })?;
        self.notify(id);
        Ok(())
    }

    /// Makes every [`Table::record`]ed write of the store power-cut durable.
    pub fn sync(&self) -> Result<()> {
        tokio::task::block_in_place(|| self.store.sync())?;
        Ok(())
    }

    /// Stores a new object with its `created` event, then shows it; fsynced.
    pub fn insert(&self, o: T, detail: impl Into<String>) -> Result<()> {
        self.insert_with(o, detail, Durability::Synced)
    }

    /// [`Table::insert`], as durable as the caller needs: committed only when a synced
    /// write of the same request follows before its reply.
    pub fn insert_with(&self, o: T, detail: impl Into<String>, durability: Durability) -> Result<()> {
        let ev = Event::new(T::KIND, o.id(), o.name(), "created", detail);
        tokio::task::block_in_place(|| self.store.insert_with(T::KIND, o.id(), o.name(), &o, &ev, durability))?;
        self.map.write().unwrap().insert(o.id().to_string(), o);
        Ok(())
    }

    /// Deletes an object from the store, then from view.
    pub fn delete(&self, id: &str) -> Result<()> {
        let Some(o) = self.get(id) else { return Ok(()) };
        let ev = Event::new(T::KIND, id, o.name(), "removed", "");
        tokio::task::block_in_place(|| self.store.delete(T::KIND, id, &ev))?;
        self.map.write().unwrap().remove(id);
        self.notify(id);
        Ok(())
    }

    /// Wakes the waiters on `id` without a write.
    pub fn notify(&self, id: &str) {
        let _ = self.changes.send(id.to_string());
    }

    /// Waits until `done` holds for the object; `None` on timeout or if it goes away.
    pub async fn wait_until(&self, id: &str, done: impl Fn(&T) -> bool, timeout: Duration) -> Option<T> {
        let mut rx = self.changes.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.get(id) {
                Some(o) if done(&o) => return Some(o),
                Some(_) => {}
                None => return None,
            }
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Err(_) | Ok(Err(broadcast::error::RecvError::Closed)) => return None,
                Ok(_) => {}
            }
        }
    }
}

/// One async lock per object id.
#[derive(Default)]
pub struct OpLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl OpLocks {
    pub fn of(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.0.lock().unwrap().entry(id.to_string()).or_default().clone()
    }

    pub fn forget(&self, id: &str) {
        self.0.lock().unwrap().remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use micro_os_core::{Container, ContainerSpec};

    fn container(id: &str, name: &str) -> Container {
        let spec: ContainerSpec =
            serde_json::from_value(serde_json::json!({"name": name, "image": "busybox"})).unwrap();
        Container::new(id.into(), spec, chrono::Utc::now())
    }

    #[test]
    fn objects_are_found_by_id_name_or_a_unique_id_prefix() {
        let store = Arc::new(Store::open_in_memory().unwrap());
        let t: Table<Container> = Table::load(store, broadcast::channel(4).0).unwrap();
        t.insert(container("3f2a9c1b0d4e5566", "web"), "").unwrap();
        t.insert(container("3f2a9c77aa001122", "db"), "").unwrap();
        let name = |k: &str| t.find(k).map(|c| c.spec.name);
        assert_eq!(name("3f2a9c1b0d4e5566").unwrap(), "web");
        assert_eq!(name("db").unwrap(), "db");
        assert_eq!(name("3f2a9c1b0d4e").unwrap(), "web", "the 12 characters a list shows");
        assert!(name("3f2a9c").unwrap_err().to_string().contains("names more than one"));
        assert!(name("3f2a9").unwrap_err().to_string().contains("not found"), "too short to be a prefix");
        assert!(name("nope").unwrap_err().to_string().contains("not found"));
    }
}
