//! What every proxy of the data plane shares: the live sandboxes (read only), the config in force, the
//! minted secrets' store (read only: the current tokens), the audit log, the upstream connections, and the
//! sandbox pools, which no connection may enter.

use std::sync::Arc;

use ipnet::IpNet;

use crate::audit::Audit;
use crate::config::Current;
use crate::proxy::upstream::Upstreams;
use crate::sandbox::live::Registry;
use crate::secrets::Store;

pub struct ProxyContext {
    pub sandboxes: Arc<Registry>,
    pub config: Arc<Current>,
    pub minted: Store,
    pub audit: Audit,
    pub upstreams: Upstreams,
    pub networks: Vec<IpNet>,
}
