//! Setup through the ordinary client API: register users (m.login.dummy),
//! create public rooms, join members, fill rooms with messages — in parallel
//! on one monoio runtime, `--setup-concurrency` requests in flight. Any
//! failure ends the run with a message (a bench cannot measure without its
//! fixture); nothing panics on a server's answer.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;
use std::time::Instant;

use crate::client::Conn;
use crate::matrix::{self, Account, ApiError};
use crate::url::Target;

/// Users, rooms, and who is in which room.
#[derive(Clone, Debug, Default)]
pub struct Fixture {
    pub users: Vec<Account>,
    pub rooms: Vec<String>,
    /// `rooms_of[u]`: room indexes user u is in.
    pub rooms_of: Vec<Vec<usize>>,
    pub server_header: Option<String>,
}

pub const PASSWORD: &str = "hearth-bench-pw-1";

/// Runs `f(conn, i)` for i in 0..n on `workers` connections; results in order.
pub async fn parallel<T, F, Fut>(
    target: &Target,
    n: usize,
    workers: usize,
    what: &str,
    f: F,
) -> anyhow::Result<Vec<T>>
where
    T: 'static,
    F: Fn(Conn, usize) -> Fut + 'static,
    Fut: Future<Output = (Conn, Result<T, ApiError>)> + 'static,
{
    let started = Instant::now();
    let f = Rc::new(f);
    let next = Rc::new(Cell::new(0usize));
    let results: Rc<RefCell<Vec<Option<T>>>> =
        Rc::new(RefCell::new((0..n).map(|_| None).collect()));
    let failed: Rc<RefCell<Option<String>>> = Rc::new(RefCell::new(None));
    let mut handles = Vec::new();
    for _ in 0..workers.clamp(1, n.max(1)) {
        let (f, next, results, failed) = (f.clone(), next.clone(), results.clone(), failed.clone());
        let mut conn = Conn::new(target.addr, &target.host_header);
        handles.push(monoio::spawn(async move {
            loop {
                let i = next.get();
                if i >= n || failed.borrow().is_some() {
                    return;
                }
                next.set(i + 1);
                let (c, r) = f(conn, i).await;
                conn = c;
                match r {
                    Ok(v) => results.borrow_mut()[i] = Some(v),
                    Err(e) => {
                        failed.borrow_mut().get_or_insert(format!("item {i}: {e}"));
                        return;
                    }
                }
            }
        }));
    }
    for h in handles {
        h.await;
    }
    if let Some(e) = failed.borrow_mut().take() {
        anyhow::bail!("setup failed while {what}: {e}");
    }
    let out: Vec<T> = results.borrow_mut().drain(..).flatten().collect();
    if out.len() != n {
        anyhow::bail!("setup failed while {what}: {} of {n} done", out.len());
    }
    eprintln!(
        "setup: {what}: {n} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(out)
}

/// Registers `n` users named `hb{run}u{i}`.
pub async fn register_users(
    target: &Target,
    run: &str,
    n: usize,
    workers: usize,
) -> anyhow::Result<Vec<Account>> {
    let run = run.to_owned();
    parallel(target, n, workers, "registering users", move |mut c, i| {
        let name = format!("hb{run}u{i}");
        async move {
            let r = matrix::register(&mut c, &name, PASSWORD).await;
            (c, r)
        }
    })
    .await
}

/// Registers users, creates one room per `members` entry (by its first
/// member) and joins the others.
pub async fn build(
    target: &Target,
    run: &str,
    n_users: usize,
    members: Vec<Vec<usize>>,
    workers: usize,
) -> anyhow::Result<Fixture> {
    let mut c = Conn::new(target.addr, &target.host_header);
    let server_header = matrix::server_header(&mut c)
        .await
        .map_err(|e| anyhow::anyhow!("GET /versions failed: {e}"))?;
    let users = register_users(target, run, n_users, workers).await?;
    let creators: Vec<String> = members
        .iter()
        .map(|m| users[m.first().copied().unwrap_or(0)].token.clone())
        .collect();
    let run_owned = run.to_owned();
    let rooms = parallel(
        target,
        members.len(),
        workers,
        "creating rooms",
        move |mut c, r| {
            let token = creators[r].clone();
            let name = format!("hearth-bench {run_owned} room {r}");
            async move {
                let res = matrix::create_room(&mut c, &token, &name).await;
                (c, res)
            }
        },
    )
    .await?;
    let joins: Vec<(String, String)> = members
        .iter()
        .enumerate()
        .flat_map(|(r, m)| {
            m.iter()
                .skip(1)
                .map(|&u| (users[u].token.clone(), rooms[r].clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    parallel(
        target,
        joins.len(),
        workers,
        "joining rooms",
        move |mut c, i| {
            let (token, room) = joins[i].clone();
            async move {
                let res = matrix::join(&mut c, &token, &room).await;
                (c, res)
            }
        },
    )
    .await?;
    let mut rooms_of = vec![Vec::new(); n_users];
    for (r, m) in members.iter().enumerate() {
        for &u in m {
            if let Some(v) = rooms_of.get_mut(u) {
                v.push(r);
            }
        }
    }
    Ok(Fixture {
        users,
        rooms,
        rooms_of,
        server_header,
    })
}

/// User u in room u % m; room r created by user r (so m <= n).
pub fn uniform(n: usize, m: usize) -> Vec<Vec<usize>> {
    let m = m.clamp(1, n.max(1));
    let mut members = vec![Vec::new(); m];
    for u in 0..n {
        members[u % m].push(u);
    }
    members
}

/// Skewed room sizes: each user joins 1–3 rooms drawn with Zipf(1) weights
/// (room k has weight 1/(k+1)), so a few rooms are big and most are small;
/// every room keeps at least its creator (user r % n).
pub fn skewed(n: usize, m: usize, seed: u64) -> Vec<Vec<usize>> {
    let n = n.max(1);
    let m = m.max(1);
    let mut rng = fastrand::Rng::with_seed(seed);
    let weights: Vec<f64> = (0..m).map(|k| 1.0 / (k as f64 + 1.0)).collect();
    let total: f64 = weights.iter().sum();
    let mut members: Vec<Vec<usize>> = (0..m).map(|r| vec![r % n]).collect();
    for u in 0..n {
        let want = 1 + rng.usize(0..3);
        for _ in 0..want {
            let mut x = rng.f64() * total;
            let mut pick = m - 1;
            for (k, w) in weights.iter().enumerate() {
                if x < *w {
                    pick = k;
                    break;
                }
                x -= w;
            }
            if !members[pick].contains(&u) {
                members[pick].push(u);
            }
        }
    }
    members
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_spreads_users() {
        let m = uniform(10, 3);
        assert_eq!(m, vec![vec![0, 3, 6, 9], vec![1, 4, 7], vec![2, 5, 8]]);
        assert_eq!(uniform(2, 5).len(), 2, "no more rooms than creators");
    }

    #[test]
    fn skewed_is_seeded_and_skewed() {
        let a = skewed(200, 20, 7);
        assert_eq!(a, skewed(200, 20, 7));
        assert_ne!(a, skewed(200, 20, 8));
        assert!(a.iter().all(|m| !m.is_empty()));
        let first = a[0].len();
        let last = a[19].len();
        assert!(first > 3 * last, "room 0 has {first}, room 19 has {last}");
        for (r, m) in a.iter().enumerate() {
            let mut s = m.clone();
            s.sort();
            s.dedup();
            assert_eq!(s.len(), m.len(), "room {r} has a duplicate member");
        }
    }
}
