//! conversa: the stateful engine between Kommo CRM, n8n and sellers.
pub mod store;
