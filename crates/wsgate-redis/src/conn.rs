//! One command connection type for both deployments: a single Redis (a
//! [`ConnectionManager`]) or a Redis Cluster (redis-rs `cluster-async`, which follows
//! `MOVED`/`ASK` redirections and refreshes its slot map after a fail-over by itself).
//!
//! Everything above this module issues commands through [`Conn`] and stays unaware of which
//! one it has, with one exception the type system cannot hide: a pipeline must stay within
//! one hash slot in a cluster, so commands that touch several channels go through
//! [`Conn::run_each`] instead of a pipeline.

use futures_util::future::try_join_all;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    /// Runs independent commands whose replies are ignored: one pipeline on a single Redis
    /// (one round trip), concurrently one by one in a cluster (their keys may live in
    /// different slots, which a cluster pipeline refuses). Not atomic either way.
    pub async fn run_each(&self, cmds: Vec<Cmd>) -> Result<(), redis::RedisError> {
        match self {
            Conn::Single(conn) => {
                let mut pipe = redis::pipe();
                for cmd in cmds {
                    pipe.add_command(cmd).ignore();
                }
                pipe.query_async(&mut conn.clone()).await
            }
            Conn::Cluster(conn) => {
                try_join_all(cmds.into_iter().map(|cmd| {
                    let mut conn = conn.clone();
                    async move { cmd.query_async::<Value>(&mut conn).await }
                }))
                .await?;
                Ok(())
            }
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}
