//! The `xe` verbs, each declared once.

/// Declares every verb once: its name and its arguments as `help` shows them. Where a verb
/// takes a fixed set of keys, they are the `key=PLACEHOLDER` words of its arguments (optional
/// in brackets): the verb refuses any other and requires the rest.
macro_rules! verbs {
    ($($v:ident = $name:literal $usage:literal,)+) => {
        /// A command of the `xe` CLI, forwarded to the daemon.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Verb { $($v),+ }

        impl Verb {
            /// Every verb, in the order `help` lists them.
            pub const ALL: &'static [Verb] = &[$(Verb::$v),+];

            /// The verb as typed.
            pub fn name(self) -> &'static str {
                match self { $(Verb::$v => $name),+ }
            }

            /// Its arguments, as `help` shows them.
            pub fn usage(self) -> &'static str {
                match self { $(Verb::$v => $usage),+ }
            }
        }
    };
}

verbs! {
    NetworkCreate = "network-create" "name-label=NAME [uuid=UUID] [default-locking-mode=M]",
    NetworkDestroy = "network-destroy" "uuid=UUID",
    NetworkParamSet = "network-param-set" "uuid=UUID PARAM=VALUE...",
    NetworkParamGet = "network-param-get" "uuid=UUID param-name=PARAM",
    NetworkList = "network-list" "[--json]",
    VifCreate = "vif-create" "network-uuid=UUID device=IFNAME mac=MAC [uuid=UUID] [vm-uuid=UUID]",
    VifDestroy = "vif-destroy" "uuid=UUID [--if-exists]",
    VifParamSet = "vif-param-set" "uuid=UUID PARAM=VALUE... (maps: PARAM:KEY=VALUE)",
    VifParamAdd = "vif-param-add" "uuid=UUID SETPARAM=ITEMS",
    VifParamRemove = "vif-param-remove" "uuid=UUID SETPARAM=ITEMS",
    VifParamGet = "vif-param-get" "uuid=UUID param-name=PARAM",
    VifList = "vif-list" "[device=IFNAME] [--minimal] [--json]",
    VifStats = "vif-stats" "[uuid=UUID] [--json]",
}

impl Verb {
    /// The verb named `s`, if it is one.
    pub fn parse(s: &str) -> Option<Verb> {
        Self::ALL.iter().copied().find(|v| v.name() == s)
    }

    /// The fixed keys of its arguments, each with whether it is required.
    pub(super) fn keys(self) -> Vec<(&'static str, bool)> {
        self.usage()
            .split_whitespace()
            .filter_map(|w| {
                let optional = w.starts_with('[');
                let (key, _) = w.trim_matches(['[', ']']).split_once('=')?;
                key.bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'-')
                    .then_some((key, !optional))
            })
            .collect()
    }
}
