//! DICOM PS3.15 Annex E, Table E.1-1: the attributes of the Basic Application Level
//! Confidentiality Profile and what the profile does to each, as m3ret-load applies
//! it. Where the table allows several actions (X/Z/D) the strictest that keeps a
//! file readable is taken: removal, or an empty value for attributes m3ret reads.
//!
//! The rules in `deidentify.rs` go beyond the table: every person name, date, time
//! and non-standard UID anywhere, and every private attribute, is handled whether
//! listed here or not.

use dicom_core::Tag;

/// What the profile does to an attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// X: removed.
    Remove,
    /// Z: kept with an empty value.
    Empty,
    /// D: a dummy value of its VR (a sequence: one with no items).
    Dummy,
    /// U: a UID replaced by one derived from it under the site's key.
    Uid,
    /// PatientID and AccessionNumber: the keyed pseudonym (a consistent dummy, which
    /// the profile allows), so that tables still join.
    Pseudonym,
}

use Action::*;

/// Table E.1-1, by tag. Groups 50xx (curves) and 60xx overlay data and comments,
/// which the table lists by pattern, are in [`action`].
const TABLE: &[(u16, u16, Action)] = &[
    (0x0002, 0x0003, Uid),       // Media Storage SOP Instance UID
    (0x0004, 0x1511, Uid),       // Referenced SOP Instance UID in File
    (0x0008, 0x0014, Uid),       // Instance Creator UID
    (0x0008, 0x0015, Remove),    // Instance Coercion DateTime
    (0x0008, 0x0018, Uid),       // SOP Instance UID
    (0x0008, 0x0020, Empty),     // Study Date
    (0x0008, 0x0021, Remove),    // Series Date
    (0x0008, 0x0022, Remove),    // Acquisition Date
    (0x0008, 0x0023, Empty),     // Content Date
    (0x0008, 0x0024, Remove),    // Overlay Date
    (0x0008, 0x0025, Remove),    // Curve Date
    (0x0008, 0x002A, Remove),    // Acquisition DateTime
    (0x0008, 0x0030, Empty),     // Study Time
    (0x0008, 0x0031, Remove),    // Series Time
    (0x0008, 0x0032, Remove),    // Acquisition Time
    (0x0008, 0x0033, Empty),     // Content Time
    (0x0008, 0x0034, Remove),    // Overlay Time
    (0x0008, 0x0035, Remove),    // Curve Time
    (0x0008, 0x0050, Pseudonym), // Accession Number
    (0x0008, 0x0058, Uid),       // Failed SOP Instance UID List
    (0x0008, 0x0080, Remove),    // Institution Name
    (0x0008, 0x0081, Remove),    // Institution Address
    (0x0008, 0x0082, Remove),    // Institution Code Sequence
    (0x0008, 0x0090, Empty),     // Referring Physician's Name
    (0x0008, 0x0092, Remove),    // Referring Physician's Address
    (0x0008, 0x0094, Remove),    // Referring Physician's Telephone Numbers
    (0x0008, 0x0096, Remove),    // Referring Physician Identification Sequence
    (0x0008, 0x010D, Uid),       // Context Group Extension Creator UID
    (0x0008, 0x0201, Remove),    // Timezone Offset From UTC
    (0x0008, 0x1010, Remove),    // Station Name
    (0x0008, 0x1030, Remove),    // Study Description
    (0x0008, 0x103E, Remove),    // Series Description
    (0x0008, 0x1040, Remove),    // Institutional Department Name
    (0x0008, 0x1041, Remove),    // Institutional Department Type Code Sequence
    (0x0008, 0x1048, Remove),    // Physician(s) of Record
    (0x0008, 0x1049, Remove),    // Physician(s) of Record Identification Sequence
    (0x0008, 0x1050, Remove),    // Performing Physicians' Name
    (0x0008, 0x1052, Remove),    // Performing Physician Identification Sequence
    (0x0008, 0x1060, Remove),    // Name of Physician(s) Reading Study
    (0x0008, 0x1062, Remove),    // Physician(s) Reading Study Identification Sequence
    (0x0008, 0x1070, Remove),    // Operators' Name
    (0x0008, 0x1072, Remove),    // Operator Identification Sequence
    (0x0008, 0x1080, Remove),    // Admitting Diagnoses Description
    (0x0008, 0x1084, Remove),    // Admitting Diagnoses Code Sequence
    (0x0008, 0x1110, Remove),    // Referenced Study Sequence
    (0x0008, 0x1111, Remove),    // Referenced Performed Procedure Step Sequence
    (0x0008, 0x1120, Remove),    // Referenced Patient Sequence
    (0x0008, 0x1155, Uid),       // Referenced SOP Instance UID
    (0x0008, 0x1195, Uid),       // Transaction UID
    (0x0008, 0x2111, Remove),    // Derivation Description
    (0x0008, 0x3010, Uid),       // Irradiation Event UID
    (0x0008, 0x4000, Remove),    // Identifying Comments
    (0x0008, 0x9123, Uid),       // Creator-Version UID
    (0x0010, 0x0010, Empty),     // Patient's Name
    (0x0010, 0x0020, Pseudonym), // Patient ID
    (0x0010, 0x0021, Remove),    // Issuer of Patient ID
    (0x0010, 0x0024, Remove),    // Issuer of Patient ID Qualifiers Sequence
    (0x0010, 0x0030, Empty),     // Patient's Birth Date
    (0x0010, 0x0032, Remove),    // Patient's Birth Time
    (0x0010, 0x0033, Remove),    // Patient's Birth Date in Alternative Calendar
    (0x0010, 0x0034, Remove),    // Patient's Death Date in Alternative Calendar
    (0x0010, 0x0040, Empty),     // Patient's Sex
    (0x0010, 0x0050, Remove),    // Patient's Insurance Plan Code Sequence
    (0x0010, 0x0101, Remove),    // Patient's Primary Language Code Sequence
    (0x0010, 0x0102, Remove),    // Patient's Primary Language Modifier Code Sequence
    (0x0010, 0x1000, Remove),    // Other Patient IDs
    (0x0010, 0x1001, Remove),    // Other Patient Names
    (0x0010, 0x1002, Remove),    // Other Patient IDs Sequence
    (0x0010, 0x1005, Remove),    // Patient's Birth Name
    (0x0010, 0x1010, Remove),    // Patient's Age
    (0x0010, 0x1020, Remove),    // Patient's Size
    (0x0010, 0x1030, Remove),    // Patient's Weight
    (0x0010, 0x1040, Remove),    // Patient's Address
    (0x0010, 0x1050, Remove),    // Insurance Plan Identification
    (0x0010, 0x1060, Remove),    // Patient's Mother's Birth Name
    (0x0010, 0x1080, Remove),    // Military Rank
    (0x0010, 0x1081, Remove),    // Branch of Service
    (0x0010, 0x1090, Remove),    // Medical Record Locator
    (0x0010, 0x1100, Remove),    // Referenced Patient Photo Sequence
    (0x0010, 0x2000, Remove),    // Medical Alerts
    (0x0010, 0x2110, Remove),    // Allergies
    (0x0010, 0x2150, Remove),    // Country of Residence
    (0x0010, 0x2152, Remove),    // Region of Residence
    (0x0010, 0x2154, Remove),    // Patient's Telephone Numbers
    (0x0010, 0x2155, Remove),    // Patient's Telecom Information
    (0x0010, 0x2160, Remove),    // Ethnic Group
    (0x0010, 0x2180, Remove),    // Occupation
    (0x0010, 0x21A0, Remove),    // Smoking Status
    (0x0010, 0x21B0, Remove),    // Additional Patient History
    (0x0010, 0x21C0, Remove),    // Pregnancy Status
    (0x0010, 0x21D0, Remove),    // Last Menstrual Date
    (0x0010, 0x21F0, Remove),    // Patient's Religious Preference
    (0x0010, 0x2203, Remove),    // Patient's Sex Neutered
    (0x0010, 0x2297, Remove),    // Responsible Person
    (0x0010, 0x2299, Remove),    // Responsible Organization
    (0x0010, 0x4000, Remove),    // Patient Comments
    (0x0018, 0x0010, Empty),     // Contrast/Bolus Agent
    (0x0018, 0x1000, Remove),    // Device Serial Number
    (0x0018, 0x1002, Uid),       // Device UID
    (0x0018, 0x1004, Remove),    // Plate ID
    (0x0018, 0x1005, Remove),    // Generator ID
    (0x0018, 0x1007, Remove),    // Cassette ID
    (0x0018, 0x1008, Remove),    // Gantry ID
    (0x0018, 0x1030, Remove),    // Protocol Name
    (0x0018, 0x1400, Remove),    // Acquisition Device Processing Description
    (0x0018, 0x4000, Remove),    // Acquisition Comments
    (0x0018, 0x700A, Remove),    // Detector ID
    (0x0018, 0x9424, Remove),    // Acquisition Protocol Description
    (0x0018, 0xA003, Remove),    // Contribution Description
    (0x0020, 0x000D, Uid),       // Study Instance UID
    (0x0020, 0x000E, Uid),       // Series Instance UID
    (0x0020, 0x0010, Empty),     // Study ID
    (0x0020, 0x0052, Uid),       // Frame of Reference UID
    (0x0020, 0x0200, Uid),       // Synchronization Frame of Reference UID
    (0x0020, 0x3401, Remove),    // Modifying Device ID
    (0x0020, 0x3404, Remove),    // Modifying Device Manufacturer
    (0x0020, 0x3406, Remove),    // Modified Image Description
    (0x0020, 0x4000, Remove),    // Image Comments
    (0x0020, 0x9158, Remove),    // Frame Comments
    (0x0020, 0x9161, Uid),       // Concatenation UID
    (0x0020, 0x9164, Uid),       // Dimension Organization UID
    (0x0028, 0x1199, Uid),       // Palette Color Lookup Table UID
    (0x0028, 0x1214, Uid),       // Large Palette Color Lookup Table UID
    (0x0028, 0x4000, Remove),    // Image Presentation Comments
    (0x0032, 0x0012, Remove),    // Study ID Issuer
    (0x0032, 0x1020, Remove),    // Scheduled Study Location
    (0x0032, 0x1021, Remove),    // Scheduled Study Location AE Title
    (0x0032, 0x1030, Remove),    // Reason for Study
    (0x0032, 0x1032, Remove),    // Requesting Physician
    (0x0032, 0x1033, Remove),    // Requesting Service
    (0x0032, 0x1060, Remove),    // Requested Procedure Description
    (0x0032, 0x1070, Remove),    // Requested Contrast Agent
    (0x0032, 0x4000, Remove),    // Study Comments
    (0x0038, 0x0004, Remove),    // Referenced Patient Alias Sequence
    (0x0038, 0x0010, Remove),    // Admission ID
    (0x0038, 0x0011, Remove),    // Issuer of Admission ID
    (0x0038, 0x0014, Remove),    // Issuer of Admission ID Sequence
    (0x0038, 0x001E, Remove),    // Scheduled Patient Institution Residence
    (0x0038, 0x0020, Remove),    // Admitting Date
    (0x0038, 0x0021, Remove),    // Admitting Time
    (0x0038, 0x0040, Remove),    // Discharge Diagnosis Description
    (0x0038, 0x0050, Remove),    // Special Needs
    (0x0038, 0x0060, Remove),    // Service Episode ID
    (0x0038, 0x0061, Remove),    // Issuer of Service Episode ID
    (0x0038, 0x0062, Remove),    // Service Episode Description
    (0x0038, 0x0064, Remove),    // Issuer of Service Episode ID Sequence
    (0x0038, 0x0300, Remove),    // Current Patient Location
    (0x0038, 0x0400, Remove),    // Patient's Institution Residence
    (0x0038, 0x0500, Remove),    // Patient State
    (0x0038, 0x4000, Remove),    // Visit Comments
    (0x0040, 0x0001, Remove),    // Scheduled Station AE Title
    (0x0040, 0x0002, Remove),    // Scheduled Procedure Step Start Date
    (0x0040, 0x0003, Remove),    // Scheduled Procedure Step Start Time
    (0x0040, 0x0004, Remove),    // Scheduled Procedure Step End Date
    (0x0040, 0x0005, Remove),    // Scheduled Procedure Step End Time
    (0x0040, 0x0006, Remove),    // Scheduled Performing Physician's Name
    (0x0040, 0x0007, Remove),    // Scheduled Procedure Step Description
    (0x0040, 0x0009, Remove),    // Scheduled Procedure Step ID
    (0x0040, 0x000B, Remove),    // Scheduled Performing Physician Identification Sequence
    (0x0040, 0x0010, Remove),    // Scheduled Station Name
    (0x0040, 0x0011, Remove),    // Scheduled Procedure Step Location
    (0x0040, 0x0012, Remove),    // Pre-Medication
    (0x0040, 0x0241, Remove),    // Performed Station AE Title
    (0x0040, 0x0242, Remove),    // Performed Station Name
    (0x0040, 0x0243, Remove),    // Performed Location
    (0x0040, 0x0244, Remove),    // Performed Procedure Step Start Date
    (0x0040, 0x0245, Remove),    // Performed Procedure Step Start Time
    (0x0040, 0x0248, Remove),    // Performed Station Name Code Sequence
    (0x0040, 0x0250, Remove),    // Performed Procedure Step End Date
    (0x0040, 0x0251, Remove),    // Performed Procedure Step End Time
    (0x0040, 0x0253, Remove),    // Performed Procedure Step ID
    (0x0040, 0x0254, Remove),    // Performed Procedure Step Description
    (0x0040, 0x0275, Remove),    // Request Attributes Sequence
    (0x0040, 0x0280, Remove),    // Comments on the Performed Procedure Step
    (0x0040, 0x0555, Remove),    // Acquisition Context Sequence
    (0x0040, 0x1001, Remove),    // Requested Procedure ID
    (0x0040, 0x1004, Remove),    // Patient Transport Arrangements
    (0x0040, 0x1005, Remove),    // Requested Procedure Location
    (0x0040, 0x1010, Remove),    // Names of Intended Recipients of Results
    (0x0040, 0x1011, Remove),    // Intended Recipients of Results Identification Sequence
    (0x0040, 0x1101, Dummy),     // Person Identification Code Sequence
    (0x0040, 0x1102, Remove),    // Person's Address
    (0x0040, 0x1103, Remove),    // Person's Telephone Numbers
    (0x0040, 0x1104, Remove),    // Person's Telecom Information
    (0x0040, 0x1400, Remove),    // Requested Procedure Comments
    (0x0040, 0x2001, Remove),    // Reason for the Imaging Service Request
    (0x0040, 0x2008, Remove),    // Order Entered By
    (0x0040, 0x2009, Remove),    // Order Enterer's Location
    (0x0040, 0x2010, Remove),    // Order Callback Phone Number
    (0x0040, 0x2011, Remove),    // Order Callback Telecom Information
    (0x0040, 0x2016, Empty),     // Placer Order Number / Imaging Service Request
    (0x0040, 0x2017, Empty),     // Filler Order Number / Imaging Service Request
    (0x0040, 0x2400, Remove),    // Imaging Service Request Comments
    (0x0040, 0x3001, Remove),    // Confidentiality Constraint on Patient Data Description
    (0x0040, 0x4023, Uid), // Referenced General Purpose Scheduled Procedure Step Transaction UID
    (0x0040, 0x4025, Remove), // Scheduled Station Name Code Sequence
    (0x0040, 0x4027, Remove), // Scheduled Station Geographic Location Code Sequence
    (0x0040, 0x4030, Remove), // Performed Station Geographic Location Code Sequence
    (0x0040, 0x4034, Remove), // Scheduled Human Performers Sequence
    (0x0040, 0x4035, Remove), // Actual Human Performers Sequence
    (0x0040, 0x4036, Remove), // Human Performer's Organization
    (0x0040, 0x4037, Remove), // Human Performer's Name
    (0x0040, 0xA027, Remove), // Verifying Organization
    (0x0040, 0xA073, Dummy), // Verifying Observer Sequence
    (0x0040, 0xA075, Dummy), // Verifying Observer Name
    (0x0040, 0xA078, Remove), // Author Observer Sequence
    (0x0040, 0xA07A, Remove), // Participant Sequence
    (0x0040, 0xA07C, Remove), // Custodial Organization Sequence
    (0x0040, 0xA088, Empty), // Verifying Observer Identification Code Sequence
    (0x0040, 0xA123, Dummy), // Person Name
    (0x0040, 0xA124, Uid), // UID
    (0x0040, 0xA730, Remove), // Content Sequence
    (0x0040, 0xDB0C, Uid), // Template Extension Organization UID
    (0x0040, 0xDB0D, Uid), // Template Extension Creator UID
    (0x0070, 0x0001, Dummy), // Graphic Annotation Sequence
    (0x0070, 0x0084, Empty), // Content Creator's Name
    (0x0070, 0x0086, Remove), // Content Creator's Identification Code Sequence
    (0x0070, 0x031A, Uid), // Fiducial UID
    (0x0088, 0x0140, Uid), // Storage Media File-set UID
    (0x0088, 0x0200, Remove), // Icon Image Sequence
    (0x0088, 0x0904, Remove), // Topic Title
    (0x0088, 0x0906, Remove), // Topic Subject
    (0x0088, 0x0910, Remove), // Topic Author
    (0x0088, 0x0912, Remove), // Topic Keywords
    (0x0400, 0x0100, Remove), // Digital Signature UID
    (0x0400, 0x0402, Remove), // Referenced Digital Signature Sequence
    (0x0400, 0x0403, Remove), // Referenced SOP Instance MAC Sequence
    (0x0400, 0x0404, Remove), // MAC
    (0x0400, 0x0550, Remove), // Modified Attributes Sequence
    (0x0400, 0x0561, Remove), // Original Attributes Sequence
    (0x2030, 0x0020, Remove), // Text String
    (0x3006, 0x0024, Uid), // Referenced Frame of Reference UID
    (0x3006, 0x00C2, Uid), // Related Frame of Reference UID
    (0x300A, 0x0013, Uid), // Dose Reference UID
    (0x300E, 0x0008, Remove), // Reviewer Name
    (0x4000, 0x0010, Remove), // Arbitrary
    (0x4000, 0x4000, Remove), // Text Comments
    (0x4008, 0x0042, Remove), // Results ID Issuer
    (0x4008, 0x0102, Remove), // Interpretation Recorder
    (0x4008, 0x010A, Remove), // Interpretation Transcriber
    (0x4008, 0x010B, Remove), // Interpretation Text
    (0x4008, 0x010C, Remove), // Interpretation Author
    (0x4008, 0x0111, Remove), // Interpretation Approver Sequence
    (0x4008, 0x0114, Remove), // Physician Approving Interpretation
    (0x4008, 0x0115, Remove), // Interpretation Diagnosis Description
    (0x4008, 0x0118, Remove), // Results Distribution List Sequence
    (0x4008, 0x0119, Remove), // Distribution Name
    (0x4008, 0x011A, Remove), // Distribution Address
    (0x4008, 0x0202, Remove), // Interpretation ID Issuer
    (0x4008, 0x0300, Remove), // Impressions
    (0x4008, 0x4000, Remove), // Results Comments
    (0xFFFA, 0xFFFA, Remove), // Digital Signatures Sequence
    (0xFFFC, 0xFFFC, Remove), // Data Set Trailing Padding
];

/// The profile's action for `tag`, if the table lists it.
pub fn action(tag: Tag) -> Option<Action> {
    let (group, element) = (tag.group(), tag.element());
    // Curves (50xx,xxxx); overlay data and comments (60xx,3000), (60xx,4000).
    if (0x5000..=0x50FF).contains(&group) && group.is_multiple_of(2) {
        return Some(Remove);
    }
    if (0x6000..=0x60FF).contains(&group)
        && group.is_multiple_of(2)
        && matches!(element, 0x3000 | 0x4000)
    {
        return Some(Remove);
    }
    TABLE
        .binary_search_by_key(&(group, element), |(g, e, _)| (*g, *e))
        .ok()
        .map(|i| TABLE[i].2)
}

/// Every tag the table lists (for tests).
#[cfg(test)]
pub fn listed() -> impl Iterator<Item = (Tag, Action)> {
    TABLE.iter().map(|(g, e, a)| (Tag(*g, *e), *a))
}

/// Patient characteristics the Retain Patient Characteristics Option keeps.
pub const PATIENT_CHARACTERISTICS: &[Tag] = &[
    Tag(0x0010, 0x0040), // Patient's Sex
    Tag(0x0010, 0x1010), // Patient's Age
    Tag(0x0010, 0x1020), // Patient's Size
    Tag(0x0010, 0x1030), // Patient's Weight
    Tag(0x0010, 0x2160), // Ethnic Group
    Tag(0x0010, 0x21A0), // Smoking Status
    Tag(0x0010, 0x21C0), // Pregnancy Status
    Tag(0x0010, 0x2203), // Patient's Sex Neutered
];

#[cfg(test)]
mod tests {
    #[test]
    fn the_table_is_sorted_so_that_binary_search_finds_every_entry() {
        let keys: Vec<(u16, u16)> = super::TABLE.iter().map(|(g, e, _)| (*g, *e)).collect();
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(keys, sorted);
    }
}
