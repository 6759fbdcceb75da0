-- The images an import's snapshots pin, recorded as each manifest is staged
-- (before the rest of its files). gc keeps an image a live import pins even
-- while no snapshot in the index does yet, so an archive that relies on the
-- registry's cached copy of its image does not lose it to a gc that runs
-- during the import.
CREATE TABLE import_pins (
    import TEXT NOT NULL REFERENCES imports(id) ON DELETE CASCADE,
    image  TEXT NOT NULL,          -- image manifest digest
    PRIMARY KEY (import, image)
) STRICT, WITHOUT ROWID;
