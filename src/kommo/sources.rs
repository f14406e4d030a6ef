//! The Kommo client as the sellers directory's sources: active users become real sellers,
//! leads and contacts name their responsible user, talks name their contact and lead.

use async_trait::async_trait;

use crate::kommo::client::KommoClient;
use crate::sellers::{LeadSource, UserRecord, UserSource};

#[async_trait]
impl UserSource for KommoClient {
    async fn active_users(&self) -> Result<Vec<UserRecord>, String> {
        let users = self.users().await.map_err(|e| e.to_string())?;
        Ok(users
            .into_iter()
            .map(|u| UserRecord {
                kommo_user_id: u.id,
                name: u.name,
                phone: u.phone,
                active: u.is_active,
                amojo_id: u.amojo_id,
            })
            .collect())
    }
}

#[async_trait]
impl LeadSource for KommoClient {
    async fn responsible_user(&self, lead_id: u64) -> Result<Option<u64>, String> {
        let lead = self.lead(lead_id, false).await.map_err(|e| e.to_string())?;
        Ok(lead
            .map(|l| l.responsible_user_id)
            .filter(|user| *user != 0))
    }

    async fn talk_contact(&self, talk_id: u64) -> Result<Option<u64>, String> {
        let talk = self.talk(talk_id).await.map_err(|e| e.to_string())?;
        Ok(talk.map(|t| t.contact_id).filter(|c| *c != 0))
    }

    async fn contact_user(&self, contact_id: u64) -> Result<Option<u64>, String> {
        let contact = self.contact(contact_id).await.map_err(|e| e.to_string())?;
        Ok(contact
            .map(|c| c.responsible_user_id)
            .filter(|user| *user != 0))
    }

    async fn talk_lead(&self, talk_id: u64) -> Result<Option<u64>, String> {
        let talk = self.talk(talk_id).await.map_err(|e| e.to_string())?;
        Ok(talk.and_then(|t| t.lead_id))
    }
}
