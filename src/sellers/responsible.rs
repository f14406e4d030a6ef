//! Who is responsible for a conversation, in the original system's order (see
//! [`SellerDirectory::responsible`]), and the contact assignments and Kommo lookups (lead →
//! user, contact → user, talk → contact and lead) it needs, each cached for the directory's TTL.

use std::sync::Arc;

use tracing::debug;

use super::directory::{SellerDirectory, cached, call};
use super::model::*;

impl SellerDirectory {
    /// Assigns a contact to a seller (the "contact" step of [`SellerDirectory::responsible`]).
    pub async fn assign_contact(
        &self,
        contact_id: u64,
        seller_id: &str,
    ) -> Result<Seller, DirectoryError> {
        if contact_id == 0 {
            return Err(invalid("contact_id", "must be a positive integer"));
        }
        let seller = self
            .by_id(seller_id)
            .await?
            .ok_or_else(|| DirectoryError::NotFound(seller_id.trim().to_owned()))?;
        self.inner
            .store
            .put_value(&contact_key(contact_id), seller.id.as_bytes())
            .await?;
        Ok(seller)
    }

    /// Removes a contact's assignment, if any.
    pub async fn unassign_contact(&self, contact_id: u64) -> Result<(), DirectoryError> {
        Ok(self
            .inner
            .store
            .put_value(&contact_key(contact_id), b"")
            .await?)
    }

    /// The seller assigned to a contact, if any (an assignment to a seller that no longer
    /// exists counts as none).
    pub async fn contact_assignment(
        &self,
        contact_id: u64,
    ) -> Result<Option<Seller>, DirectoryError> {
        let Some(bytes) = self.inner.store.get_value(&contact_key(contact_id)).await? else {
            return Ok(None);
        };
        let id = String::from_utf8_lossy(&bytes);
        if id.trim().is_empty() {
            return Ok(None);
        }
        let found = self.by_id(&id).await?;
        if found.is_none() {
            debug!(contact_id, seller = %id, "contact assigned to an unknown seller");
        }
        Ok(found)
    }

    /// The contact a Kommo talk belongs to (cached).
    pub async fn talk_contact(&self, talk_id: u64) -> Result<Option<u64>, DirectoryError> {
        let leads = self.lead_source()?;
        cached(&self.inner.talk_contacts, talk_id, || {
            call("talk", leads.talk_contact(talk_id))
        })
        .await
    }

    /// The Kommo user responsible for a lead (cached).
    pub async fn lead_user(&self, lead_id: u64) -> Result<Option<u64>, DirectoryError> {
        let leads = self.lead_source()?;
        cached(&self.inner.lead_users, lead_id, || {
            call("lead", leads.responsible_user(lead_id))
        })
        .await
    }

    /// The Kommo user responsible for a contact (cached).
    pub async fn contact_user(&self, contact_id: u64) -> Result<Option<u64>, DirectoryError> {
        let leads = self.lead_source()?;
        cached(&self.inner.contact_users, contact_id, || {
            call("contact", leads.contact_user(contact_id))
        })
        .await
    }

    /// The lead a Kommo talk belongs to (cached).
    pub async fn talk_lead(&self, talk_id: u64) -> Result<Option<u64>, DirectoryError> {
        let leads = self.lead_source()?;
        cached(&self.inner.talk_leads, talk_id, || {
            call("talk", leads.talk_lead(talk_id))
        })
        .await
    }

    fn lead_source(&self) -> Result<&Arc<dyn LeadSource>, DirectoryError> {
        self.inner
            .leads
            .as_ref()
            .ok_or(DirectoryError::NotConfigured)
    }

    /// Who is responsible for a conversation, and how that was found ([`FoundBy`]):
    /// 1. `Conversation` — `assigned`, the seller the conversation holds (or who opened it
    ///    proactively);
    /// 2. `Contact` — the contact's assignment, else the Kommo user responsible for the
    ///    contact (a `talk_id` is resolved to its contact when no `contact_id` is given);
    /// 3. `Lead` — the Kommo user responsible for the lead (a `talk_id` names its lead when
    ///    no `lead_id` is given).
    ///
    /// A step that cannot answer falls through to the next; a Kommo error (or no Kommo
    /// configured) is returned only when no step found a seller.
    pub async fn responsible(
        &self,
        talk_id: Option<u64>,
        contact_id: Option<u64>,
        lead_id: Option<u64>,
        assigned: Option<&str>,
    ) -> Result<Option<(Seller, FoundBy)>, DirectoryError> {
        if let Some(id) = assigned {
            match self.by_id(id).await? {
                Some(seller) => return Ok(Some((seller, FoundBy::Conversation))),
                None => debug!(seller = id, "conversation held by a seller unknown here"),
            }
        }
        let mut source_error = None;
        let contact_id = match (contact_id.filter(|c| *c > 0), talk_id) {
            (Some(c), _) => Some(c),
            (None, Some(talk)) => self.talk_contact(talk).await.unwrap_or_else(|e| {
                source_error = Some(e);
                None
            }),
            (None, None) => None,
        };
        let by_contact = match contact_id {
            Some(contact) => self.contact_assignment(contact).await?,
            None => None,
        };
        if let Some(seller) = by_contact {
            return Ok(Some((seller, FoundBy::Contact)));
        }
        if let Some(contact) = contact_id {
            match self.contact_user(contact).await {
                Ok(Some(user)) => {
                    if let Some(seller) = self.by_kommo_user(user).await? {
                        return Ok(Some((seller, FoundBy::Contact)));
                    }
                    debug!(
                        contact,
                        user, "contact responsible user is not a known seller"
                    );
                }
                Ok(None) => {}
                Err(e) => source_error = Some(e),
            }
        }
        let lead_id = match (lead_id, talk_id) {
            (Some(lead), _) => Some(lead),
            (None, Some(talk)) => self.talk_lead(talk).await.unwrap_or_else(|e| {
                source_error = Some(e);
                None
            }),
            (None, None) => None,
        };
        if let Some(lead) = lead_id {
            match self.lead_user(lead).await {
                Ok(Some(user)) => {
                    if let Some(seller) = self.by_kommo_user(user).await? {
                        return Ok(Some((seller, FoundBy::Lead)));
                    }
                    debug!(lead, user, "lead responsible user is not a known seller");
                }
                Ok(None) => {}
                Err(e) => source_error = Some(e),
            }
        }
        match source_error {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }

    /// [`SellerDirectory::responsible`] for a talk alone.
    pub async fn lookup_for_talk(
        &self,
        talk_id: u64,
    ) -> Result<Option<(Seller, FoundBy)>, DirectoryError> {
        self.responsible(Some(talk_id), None, None, None).await
    }

    /// [`SellerDirectory::responsible`] for a contact alone.
    pub async fn lookup_for_contact(
        &self,
        contact_id: u64,
    ) -> Result<Option<(Seller, FoundBy)>, DirectoryError> {
        self.responsible(None, Some(contact_id), None, None).await
    }

    /// [`SellerDirectory::responsible`] for a lead alone.
    pub async fn lookup_for_lead(
        &self,
        lead_id: u64,
    ) -> Result<Option<(Seller, FoundBy)>, DirectoryError> {
        self.responsible(None, None, Some(lead_id), None).await
    }
}
