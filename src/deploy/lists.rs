//! Lists and reasons that grow with the fleet or a command's output, kept bounded:
//! what shipit keeps and sends of them (Parameter Store values, the execution's state,
//! chat messages) must not grow. A leaf, so that the engine uses it without reaching
//! for the wording (`report`), which reads the engine.

/// How many names a list of nodes shows before it says how many more there are: lists
/// grow with the fleet, what shipit keeps and sends of them must not (Parameter Store
/// values, the execution's state, chat messages).
pub const NAMES_SHOWN: usize = 10;

/// `names` as kept in an outcome: the first `NAMES_SHOWN`, then `… and 193 more`.
pub fn capped(mut names: Vec<String>) -> Vec<String> {
    if names.len() > NAMES_SHOWN {
        let more = names.len() - NAMES_SHOWN;
        names.truncate(NAMES_SHOWN);
        names.push(format!("… and {more} more"));
    }
    names
}

/// The longest reason a faulty mark keeps: a failure's reason can hold a command's
/// output, and marks are kept in one 4 KB Parameter Store value.
pub const MARK_REASON_MAX: usize = 300;

/// `text` cut to at most `max` bytes at a character boundary, ending `…` when cut.
pub fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// `web001, web002, … and 193 more`.
pub fn names(list: &[String]) -> String {
    let shown = list.len().min(NAMES_SHOWN);
    let mut text = list[..shown].join(", ");
    if list.len() > shown {
        text.push_str(&format!(", … and {} more", list.len() - shown));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lists_of_nodes_say_how_many_more_instead_of_growing() {
        let list: Vec<String> = (1..=203).map(|i| format!("web{i:03}")).collect();
        assert_eq!(
            names(&list),
            "web001, web002, web003, web004, web005, web006, web007, web008, web009, web010, … and 193 more"
        );
        assert_eq!(names(&list[..2]), "web001, web002");
        let kept = capped(list.clone());
        assert_eq!(kept.len(), NAMES_SHOWN + 1);
        assert_eq!(kept.last().unwrap(), "… and 193 more");
        assert_eq!(capped(list[..NAMES_SHOWN].to_vec()).len(), NAMES_SHOWN);
    }

    #[test]
    fn a_clipped_reason_stays_within_its_bytes_at_a_character_boundary() {
        assert_eq!(clip("short", 300), "short");
        let long = "é".repeat(400);
        let cut = clip(&long, 300);
        assert!(cut.len() <= 300 && cut.ends_with('…'), "{}", cut.len());
    }
}
