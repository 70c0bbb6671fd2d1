-- The file inventory read for a row, when it is not spelled as the row's name: the name cleaned
-- as Django's FileSystemStorage cleans it ('a//b', 'a/x/../b' -> 'a/b'), or the one Unicode
-- spelling (NFC/NFD) found on disk. NULL: the row's own spelling. Names on disk that are not
-- UTF-8 are stored in relative_path escaped (keys.escape_name) and flagged 'name_not_utf8'.
ALTER TABLE {schema}.inventory_files ADD COLUMN disk_path text;
