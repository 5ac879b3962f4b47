package redisstorage

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/redis/go-redis/v9"
)

// Layout. A file (a storage key) is a hash "<prefix>/<key>" with fields
// "value" and "modified" (Unix milliseconds). Each directory, the root
// included, is a set "<prefix>:index:<dir>" of its children's names (files
// and directories alike), kept by the scripts below in the same atomic step
// as the files, so List reads a folder without scanning the key space.
const (
	fieldValue    = "value"
	fieldModified = "modified"
)

func (s *Storage) fileKey(key string) string  { return s.prefix + "/" + key }
func (s *Storage) indexKey(dir string) string { return s.prefix + ":index:" + dir }

// storeScript writes the file and adds it to its ancestors' indexes,
// stopping at the first ancestor that already lists it (the ones above
// then do too).
// KEYS[1] file; ARGV: value, modified, index prefix, key.
var storeScript = redis.NewScript(`
redis.call('HSET', KEYS[1], 'value', ARGV[1], 'modified', ARGV[2])
local p = ARGV[4]
while true do
  local i = string.find(p, '/[^/]*$')
  local dir, name = '', p
  if i then dir = string.sub(p, 1, i - 1); name = string.sub(p, i + 1) end
  if redis.call('SADD', ARGV[3] .. dir, name) == 0 then break end
  if dir == '' then break end
  p = dir
end
return 1
`)

// deleteScript deletes the file and every file and index under it, then
// unlinks it from its ancestors, removing ancestors left empty. It returns
// how many Redis keys it deleted.
// ARGV: file prefix, index prefix, key ("" is the root).
var deleteScript = redis.NewScript(`
local fp, ip, p = ARGV[1], ARGV[2], ARGV[3]
local n = redis.call('DEL', fp .. p)
local stack = {p}
while #stack > 0 do
  local d = table.remove(stack)
  for _, m in ipairs(redis.call('SMEMBERS', ip .. d)) do
    local c = m
    if d ~= '' then c = d .. '/' .. m end
    n = n + redis.call('DEL', fp .. c)
    table.insert(stack, c)
  end
  n = n + redis.call('DEL', ip .. d)
end
local q = p
while q ~= '' do
  if redis.call('EXISTS', fp .. q, ip .. q) > 0 then break end
  local i = string.find(q, '/[^/]*$')
  local dir, name = '', q
  if i then dir = string.sub(q, 1, i - 1); name = string.sub(q, i + 1) end
  redis.call('SREM', ip .. dir, name)
  q = dir
end
return n
`)

// cleanKey is the key in its one canonical form: slash-separated, no
// leading or trailing slash, no empty, "." or ".." segment; "" is the root.
func cleanKey(key string) (string, error) {
	k := strings.Trim(key, "/")
	if k == "" {
		return "", nil
	}
	for seg := range strings.SplitSeq(k, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return "", fmt.Errorf("storage key %q: empty, '.' or '..' segment", key)
		}
	}
	return k, nil
}

// Store puts value at key.
func (s *Storage) Store(ctx context.Context, key string, value []byte) error {
	k, err := cleanKey(key)
	if err == nil && k == "" {
		err = errors.New("storing at the root: a key is needed")
	}
	if err == nil {
		now := strconv.FormatInt(time.Now().UnixMilli(), 10)
		err = storeScript.Run(ctx, s.client, []string{s.fileKey(k)}, value, now, s.indexKey(""), k).Err()
		if err != nil {
			err = fmt.Errorf("redis storage: storing %s: %w", key, err)
		}
	}
	s.metrics.countErr("store", err)
	return err
}

// Load returns the value at key, fs.ErrNotExist if there is none.
func (s *Storage) Load(ctx context.Context, key string) ([]byte, error) {
	k, err := cleanKey(key)
	if err != nil {
		s.metrics.count("load", resultError)
		return nil, err
	}
	v, err := s.client.HGet(ctx, s.fileKey(k), fieldValue).Bytes()
	switch {
	case errors.Is(err, redis.Nil):
		s.metrics.count("load", resultNotFound)
		return nil, fmt.Errorf("redis storage: %s: %w", key, fs.ErrNotExist)
	case err != nil:
		s.metrics.count("load", resultError)
		return nil, fmt.Errorf("redis storage: loading %s: %w", key, err)
	}
	s.metrics.count("load", resultOK)
	return v, nil
}

// Delete deletes key and, if it is a directory, everything under it. A key
// that does not exist is not an error.
func (s *Storage) Delete(ctx context.Context, key string) error {
	k, err := cleanKey(key)
	if err == nil {
		err = deleteScript.Run(ctx, s.client, nil, s.fileKey(""), s.indexKey(""), k).Err()
		if err != nil {
			err = fmt.Errorf("redis storage: deleting %s: %w", key, err)
		}
	}
	s.metrics.countErr("delete", err)
	return err
}

// Exists says whether key is a file or a directory.
func (s *Storage) Exists(ctx context.Context, key string) bool {
	k, err := cleanKey(key)
	if err != nil {
		s.metrics.count("exists", resultError)
		return false
	}
	n, err := s.client.Exists(ctx, s.fileKey(k), s.indexKey(k)).Result()
	switch {
	case err != nil:
		s.metrics.count("exists", resultError)
		return false
	case n == 0:
		s.metrics.count("exists", resultNotFound)
		return false
	}
	s.metrics.count("exists", resultOK)
	return true
}

// List returns the keys in dir (files and directories), and with
// recursive everything under it, as the file system storage does; sorted.
// A dir that does not exist is fs.ErrNotExist.
func (s *Storage) List(ctx context.Context, dir string, recursive bool) ([]string, error) {
	d, err := cleanKey(dir)
	if err != nil {
		s.metrics.count("list", resultError)
		return nil, err
	}
	keys, err := s.list(ctx, d, recursive)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		s.metrics.count("list", resultNotFound)
		return nil, fmt.Errorf("redis storage: listing %s: %w", dir, err)
	case err != nil:
		s.metrics.count("list", resultError)
		return nil, fmt.Errorf("redis storage: listing %s: %w", dir, err)
	}
	s.metrics.count("list", resultOK)
	slices.Sort(keys)
	return keys, nil
}

func (s *Storage) list(ctx context.Context, d string, recursive bool) ([]string, error) {
	names, err := s.client.SMembers(ctx, s.indexKey(d)).Result()
	if err != nil {
		return nil, err
	}
	if len(names) == 0 {
		n, err := s.client.Exists(ctx, s.fileKey(d)).Result()
		if err != nil {
			return nil, err
		}
		if n == 0 || d == "" {
			return nil, fs.ErrNotExist
		}
		return nil, nil // a file: nothing under it
	}
	join := func(dir, name string) string {
		if dir == "" {
			return name
		}
		return dir + "/" + name
	}
	var keys []string
	level := make([]string, 0, len(names))
	for _, n := range names {
		level = append(level, join(d, n))
	}
	keys = append(keys, level...)
	// Breadth first, one pipelined round trip per depth.
	for recursive && len(level) > 0 {
		cmds := make([]*redis.StringSliceCmd, len(level))
		_, err := s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, k := range level {
				cmds[i] = p.SMembers(ctx, s.indexKey(k))
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		var next []string
		for i, c := range cmds {
			for _, n := range c.Val() {
				next = append(next, join(level[i], n))
			}
		}
		keys = append(keys, next...)
		level = next
	}
	return keys, nil
}

// Stat describes key: a file's size and modification time, or a
// directory (IsTerminal false).
func (s *Storage) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	k, err := cleanKey(key)
	if err != nil {
		s.metrics.count("stat", resultError)
		return certmagic.KeyInfo{}, err
	}
	var mod *redis.StringCmd
	var size *redis.IntCmd
	var dir *redis.IntCmd
	_, err = s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		mod = p.HGet(ctx, s.fileKey(k), fieldModified)
		size = p.HStrLen(ctx, s.fileKey(k), fieldValue)
		dir = p.Exists(ctx, s.indexKey(k))
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		s.metrics.count("stat", resultError)
		return certmagic.KeyInfo{}, fmt.Errorf("redis storage: stat %s: %w", key, err)
	}
	info := certmagic.KeyInfo{Key: key}
	switch ms, merr := mod.Int64(); {
	case merr == nil:
		info.IsTerminal = true
		info.Modified = time.UnixMilli(ms)
		info.Size = size.Val()
	case dir.Val() > 0 || k == "":
		info.IsTerminal = false
	default:
		s.metrics.count("stat", resultNotFound)
		return certmagic.KeyInfo{}, fmt.Errorf("redis storage: %s: %w", key, fs.ErrNotExist)
	}
	s.metrics.count("stat", resultOK)
	return info, nil
}

// String names the storage in Caddy's and certmagic's logs.
func (s *Storage) String() string {
	return "redis storage " + path.Join(s.addr, strconv.Itoa(s.DB), s.prefix)
}
