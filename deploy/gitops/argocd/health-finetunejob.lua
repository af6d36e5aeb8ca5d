-- Argo CD health check for finetune.dev/FineTuneJob.
-- Installed as resource.customizations.health.finetune.dev_FineTuneJob in argocd-cm
-- (argocd-cm-health.yaml holds the same script; tests/unit/test_gitops_argocd.py runs it).
--
--   Healthy      phase Succeeded (artifacts stored; the model is served when serving is on)
--   Progressing  not yet observed, or Pending/Initializing/Training/Evaluating/Uploading/Deploying
--   Degraded     phase Failed, or a Stalled condition that is True
--   Suspended    phase Suspended (spec.suspend: true)
local hs = {}

local function condition(status, ctype)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

local function describe(status, fallback)
  local parts = {}
  if status.reason ~= nil and status.reason ~= "" then
    table.insert(parts, status.reason)
  end
  if status.message ~= nil and status.message ~= "" then
    table.insert(parts, status.message)
  end
  if #parts == 0 then
    return fallback
  end
  return table.concat(parts, ": ")
end

if obj.status == nil or obj.status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the finetune-operator to pick up the job"
  return hs
end

local status = obj.status
local generation = obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local phase = status.phase
if phase == "Succeeded" then
  hs.status = "Healthy"
  local msg = "Succeeded"
  if status.metrics ~= nil and status.metrics.evalLoss ~= nil then
    msg = msg .. " (eval loss " .. tostring(status.metrics.evalLoss) .. ")"
  end
  if status.serving ~= nil and status.serving.endpoint ~= nil and status.serving.endpoint ~= "" then
    msg = msg .. ", serving at " .. status.serving.endpoint
  end
  hs.message = msg
  return hs
end

if phase == "Failed" then
  hs.status = "Degraded"
  hs.message = describe(status, "Failed")
  return hs
end

if phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = describe(status, "Suspended (spec.suspend is true)")
  return hs
end

local stalled = condition(status, "Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled, "Stalled")
  return hs
end

hs.status = "Progressing"
local msg = phase
if status.progress ~= nil and status.progress.step ~= nil and status.progress.totalSteps ~= nil then
  msg = msg .. ": step " .. tostring(status.progress.step) .. "/" .. tostring(status.progress.totalSteps)
end
if status.message ~= nil and status.message ~= "" then
  msg = msg .. " (" .. status.message .. ")"
end
hs.message = msg
return hs
