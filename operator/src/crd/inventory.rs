//! The seat inventory: seated sections and general-admission areas.

#[allow(unused_imports)]
use super::*;

// === inventory ===

/// Seated sections and general-admission areas. Section and area names are unique across both.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = inventory_bound_rule(),
    validation = Rule::new("self.sections.all(s, !self.generalAdmission.exists(g, g.name == s.name))")
        .message("spec.inventory: a name is used both by a section and by a general-admission area"),
)]
pub struct InventorySpec {
    /// Numbered seats: rows × seatsPerRow per section.
    #[serde(default)]
    #[schemars(length(max = 500))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub sections: Vec<SeatedSectionSpec>,

    /// Standing areas sold by capacity.
    #[serde(default)]
    #[schemars(length(max = 100))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub general_admission: Vec<GeneralAdmissionSpec>,
}

/// The CEL rule bounding one event's inventory by [`MAX_SEATS_PER_EVENT`].
pub fn inventory_bound_rule() -> Rule {
    Rule::new(format!(
        "self.sections.map(s, s.rows * s.seatsPerRow).sum() + self.generalAdmission.map(g, g.capacity).sum() \
         <= {MAX_SEATS_PER_EVENT} && size(self.sections) + size(self.generalAdmission) > 0"
    ))
    .message(Message::Message(format!(
        "spec.inventory must hold between 1 and {MAX_SEATS_PER_EVENT} places (sum of rows × seatsPerRow and capacity)"
    )))
}

/// A section of numbered seats.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SeatedSectionSpec {
    /// Section name, part of every seat id (<section>-<row>-<seat>): 1-32 ASCII letters, digits or '_'.
    #[schemars(regex(pattern = r"^[A-Za-z0-9_]{1,32}$"), length(max = 32))]
    pub name: String,
    /// Number of rows (1-10000).
    #[schemars(range(min = 1, max = 10000))]
    #[schemars(with = "i32")]
    pub rows: u32,
    /// Seats in each row (1-10000).
    #[schemars(range(min = 1, max = 10000))]
    #[schemars(with = "i32")]
    pub seats_per_row: u32,
    /// Price tier label shown with the seat (free text, e.g. vip).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub price_tier: Option<String>,
}

/// A general-admission (standing) area.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GeneralAdmissionSpec {
    /// Area name: 1-32 ASCII letters, digits or '_'.
    #[schemars(regex(pattern = r"^[A-Za-z0-9_]{1,32}$"), length(max = 32))]
    pub name: String,
    /// Places in the area (1-200000).
    #[schemars(range(min = 1, max = 200000))]
    #[schemars(with = "i32")]
    pub capacity: u32,
    /// Price tier label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub price_tier: Option<String>,
}
