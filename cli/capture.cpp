#include "cli/capture.h"

#include <cstdio>
#include <fstream>
#include <sstream>

namespace kiv::cli {
namespace {

// The value after "key": in a flat JSON object we wrote ourselves; numbers and number arrays only.
bool FindField(const std::string& json, const std::string& key, std::string* value) {
  const size_t at = json.find("\"" + key + "\"");
  if (at == std::string::npos) return false;
  size_t p = json.find(':', at);
  if (p == std::string::npos) return false;
  ++p;
  while (p < json.size() && json[p] == ' ') ++p;
  size_t end = p;
  if (json[p] == '[') {
    end = json.find(']', p);
    if (end == std::string::npos) return false;
    ++end;
  } else if (json[p] == '"') {
    end = json.find('"', p + 1);
    if (end == std::string::npos) return false;
    *value = json.substr(p + 1, end - p - 1);
    return true;
  } else {
    while (end < json.size() && json[end] != ',' && json[end] != '}') ++end;
  }
  *value = json.substr(p, end - p);
  return true;
}

Status ReadNumber(const std::string& json, const std::string& key, uint32_t* out) {
  std::string v;
  if (!FindField(json, key, &v)) return Status::InvalidArgument("capture meta.json lacks " + key);
  *out = static_cast<uint32_t>(std::stoul(v));
  return Status::Ok();
}

Status ReadFloats(const std::string& path, size_t count, std::vector<float>* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::NotFound("cannot open capture file '" + path + "'");
  out->resize(count);
  in.read(reinterpret_cast<char*>(out->data()), static_cast<std::streamsize>(count * sizeof(float)));
  if (in.gcount() != static_cast<std::streamsize>(count * sizeof(float)))
    return Status::InvalidArgument("capture file '" + path + "' is shorter than its shape");
  return Status::Ok();
}

}  // namespace

Result<CaptureMeta> ReadCaptureMeta(const std::string& dir) {
  std::ifstream in(dir + "/meta.json");
  if (!in) return Status::NotFound("no capture at '" + dir + "' (run tools/capture/capture.sh)");
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string json = ss.str();
  std::string format;
  if (!FindField(json, "format", &format) || format != "kiv-capture-1")
    return Status::InvalidArgument("'" + dir + "/meta.json' is not format kiv-capture-1");
  CaptureMeta m;
  m.dir = dir;
  FindField(json, "model", &m.model);
  KIV_RETURN_IF_ERROR(ReadNumber(json, "tokens", &m.tokens));
  KIV_RETURN_IF_ERROR(ReadNumber(json, "num_layers", &m.num_layers));
  KIV_RETURN_IF_ERROR(ReadNumber(json, "num_q_heads", &m.num_q_heads));
  KIV_RETURN_IF_ERROR(ReadNumber(json, "num_kv_heads", &m.num_kv_heads));
  KIV_RETURN_IF_ERROR(ReadNumber(json, "head_dim", &m.head_dim));
  std::string layers;
  if (!FindField(json, "layers", &layers)) return Status::InvalidArgument("meta.json lacks layers");
  for (char& c : layers)
    if (c == '[' || c == ']' || c == ',') c = ' ';
  std::stringstream ls(layers);
  for (uint32_t l; ls >> l;) m.layers.push_back(l);
  if (m.num_kv_heads == 0 || m.num_q_heads % m.num_kv_heads || m.head_dim % 64 || m.layers.empty())
    return Status::InvalidArgument("capture shape in '" + dir + "/meta.json' is not usable");
  return m;
}

Result<CaptureLayer> ReadCaptureLayer(const CaptureMeta& m, uint32_t layer) {
  char name[64];
  CaptureLayer out;
  out.layer = layer;
  const size_t t = m.tokens, d = m.head_dim;
  std::snprintf(name, sizeof name, "/layer_%02u.q.f32", layer);
  KIV_RETURN_IF_ERROR(ReadFloats(m.dir + name, m.num_q_heads * t * d, &out.q));
  std::snprintf(name, sizeof name, "/layer_%02u.k.f32", layer);
  KIV_RETURN_IF_ERROR(ReadFloats(m.dir + name, m.num_kv_heads * t * d, &out.k));
  std::snprintf(name, sizeof name, "/layer_%02u.v.f32", layer);
  KIV_RETURN_IF_ERROR(ReadFloats(m.dir + name, m.num_kv_heads * t * d, &out.v));
  return out;
}

}  // namespace kiv::cli
